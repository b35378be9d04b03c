"""Weights load through safetensors only: every ``from_pretrained`` of a model or pipeline in
the package passes ``use_safetensors=True``, and a folder with pickled weights is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import diffspeed
from diffspeed.errors import WeightsError

SRC = Path(diffspeed.__file__).parent
#: Classes whose ``from_pretrained`` reads no weights (configs, vocabularies).
NO_WEIGHTS = ("Scheduler", "Tokenizer")


def _from_pretrained_calls():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            ):
                yield path.relative_to(SRC), node


def test_every_model_from_pretrained_passes_use_safetensors():
    calls = list(_from_pretrained_calls())
    assert calls, "expected from_pretrained calls in the package"
    for path, node in calls:
        owner = ast.unparse(node.func.value)
        if owner.endswith(NO_WEIGHTS):
            continue
        flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert flags.get("use_safetensors") == "True", f"{path}:{node.lineno} {owner}"


def test_a_bin_folder_is_refused_before_loading(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    import torch

    from diffspeed.bench.pipeline import load_text_to_image
    from diffspeed.bench.runner import ModelOptions, load_model

    with pytest.raises(WeightsError, match="safetensors only"):
        load_model(ModelOptions(source=str(tmp_path)), 1.0, torch.device("cpu"))
    with pytest.raises(WeightsError, match="pickled weights"):
        load_text_to_image(tmp_path)

"""LCM-LoRA adapters: diffusers-format save / load round trip, fusing, a diffusers pipeline."""

import json
import os

import pytest
import torch

import diffspeed
from diffspeed.distill.consistency import Boundary
from diffspeed.distill.lora import (
    ALL_TARGETS,
    DEFAULT_TARGETS,
    META_NAME,
    WEIGHT_NAME,
    LoRA,
    add_lora,
    fuse_lora,
    load_lora,
    lora_state_dict,
    read_lora,
    save_lora,
)
from diffspeed.errors import WeightsError
from diffspeed.models.io import read_metadata
from diffspeed.models.pipelines import lcm_pipeline


@pytest.fixture(params=[DEFAULT_TARGETS, ALL_TARGETS], ids=["default-targets", "all-targets"])
def targets(request):
    return request.param


@pytest.fixture
def adapted(tiny_teacher, targets):
    """A peft-adapted copy of the tiny teacher's UNet with non-zero LoRA weights."""
    import copy

    net = add_lora(copy.deepcopy(tiny_teacher.model), LoRA(4, 8, targets))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([5, 300, 700, 999]), torch.tensor([1, 2, 3, 10])


def test_only_lora_weights_train_and_start_at_zero(tiny_teacher):
    import copy

    net = add_lora(copy.deepcopy(tiny_teacher.model), LoRA(rank=2, alpha=2))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("conv1" in n for n in trainable) and any("to_q" in n for n in trainable)
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            net(x, t, class_labels=y).sample, tiny_teacher.model(x, t, class_labels=y).sample
        )


def test_save_load_round_trip_in_diffusers_format(tmp_path, tiny_teacher, adapted, targets):
    cfg = LoRA(4, 8, targets)
    path = save_lora(tmp_path, adapted, cfg, {"boundary": {"sigma_data": 0.5, "scale": 50.0}})
    assert path == tmp_path / WEIGHT_NAME and (tmp_path / META_NAME).is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    # diffusers layout: unet.<module>.lora_A/B.weight, the peft LoraConfig in the header
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert raw and all(k.startswith("unet.") and ".lora_" in k for k in raw)
    stem_and_head = {"unet.conv_in.lora_A.weight", "unet.conv_out.lora_B.weight"}
    assert stem_and_head <= set(raw) if targets == ALL_TARGETS else not stem_and_head & set(raw)
    meta = json.loads(read_metadata(path)["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8
    tensors, back, info = read_lora(tmp_path)
    assert back == cfg and info["boundary"]["scale"] == 50.0
    for k, v in lora_state_dict(adapted).items():
        assert torch.equal(tensors[k], v)
    # fused copy == the peft model, and the base network is untouched
    x, t, y = _inputs()
    before = tiny_teacher.model(x, t, class_labels=y).sample
    with torch.no_grad():
        ref = adapted(x, t, class_labels=y).sample
        fused = fuse_lora(tiny_teacher.model, tmp_path)(x, t, class_labels=y).sample
        assert torch.equal(tiny_teacher.model(x, t, class_labels=y).sample, before)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5)
    den = load_lora(tmp_path, tiny_teacher)
    assert den.boundary == Boundary(0.5, 50.0)


def test_diffusers_pipeline_loads_the_adapter(tmp_path, tiny_teacher, adapted, targets):
    save_lora(tmp_path, adapted, LoRA(4, 8, targets), {})
    pipe = lcm_pipeline(tiny_teacher.model)
    pipe.load_lora_weights(tmp_path)  # diffusers' own loader (peft backend)
    x, t, y = _inputs()
    with torch.no_grad():
        ref = adapted(x, t, class_labels=y).sample
        torch.testing.assert_close(pipe.unet(x, t, class_labels=y).sample, ref)
        # one LCM step in diffusers == one `lcm` step of diffspeed's fused loader
        labels = torch.tensor([0, 4, 9])
        ours_noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        theirs = pipe(labels, 1, generator=torch.Generator().manual_seed(0))
        den = load_lora(tmp_path, tiny_teacher)
        ours = diffspeed.sample(den, ours_noise, "lcm", 1, "lcm", cond={"class_labels": labels})
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_adapter_for_another_architecture_is_refused(tmp_path, tiny_teacher, adapted, targets):
    save_lora(tmp_path, adapted, LoRA(4, 8, targets), {})
    from diffusers import UNet2DModel

    cfg = {k: v for k, v in tiny_teacher.model.config.items() if not k.startswith("_")}
    other = UNet2DModel(**{**cfg, "block_out_channels": [16, 16]})
    with pytest.raises(WeightsError, match="another model"):
        fuse_lora(other, tmp_path)
    (tmp_path / META_NAME).unlink()
    with pytest.raises(WeightsError, match="missing"):
        read_lora(tmp_path)

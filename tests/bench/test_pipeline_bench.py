"""The pipeline bench: rows through a diffusers text-to-image pipeline (tiny random SD parts),
the report's columns, the --model names, and pickled folders refused. No timing asserts."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import fields

import pytest

from diffspeed.bench.config import Row
from diffspeed.bench.pipeline import PipelineRow, load_text_to_image, resolve_model
from diffspeed.cli import main
from diffspeed.errors import ConfigError, WeightsError

TINY_PIPELINE_BENCH = """
[settings]
samples = 4
batch_size = 2
warmup = 0
repeats = 2
timing_batch = 2
threads = 1
guidance = 2.0
reference_steps = 4
baseline = {solver = "ddim", steps = 4}

[[row]]
name = "dpm++2m-3"
solver = "dpmpp_2m"
steps = 3
schedule = "karras"

[[row]]
name = "ddim-4+deepcache-2"
solver = "ddim"
steps = 4
cache = {method = "deepcache", interval = 2, branch = 0}

[[row]]
name = "diffusers DPM++2M-3"
peer = "DPMSolverMultistepScheduler"
steps = 3
options = {timestep_spacing = "trailing"}
"""


@pytest.fixture(scope="module")
def sd_folder(sd_components, tmp_path_factory):
    """A StableDiffusionPipeline folder of the tiny random parts, safetensors only."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from tiny_sd import SD_SCHEDULER, make_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe = make_pipeline(StableDiffusionPipeline, sd_components, DDIMScheduler(**SD_SCHEDULER))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_bench_through_the_pipeline_writes_the_report(sd_folder, tmp_path, capsys):
    toml = tmp_path / "bench.toml"
    toml.write_text(TINY_PIPELINE_BENCH)
    out = tmp_path / "report"
    argv = ["bench", str(toml), "--model", str(sd_folder), "--out", str(out), "--no-progress"]
    assert main([*argv, "--prompt", "a cat", "--prompt", "a dog"]) == 0
    assert "bench took" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    names = ["ddim-4", "dpm++2m-3", "ddim-4+deepcache-2", "diffusers DPM++2M-3"]
    assert res["kind"] == "pipeline" and res["order"] == names and res["baseline"] == "ddim-4"
    rows = res["rows"]
    assert [rows[n]["nfe"] for n in names] == [4, 3, 4, 3]
    assert [rows[n]["family"] for n in names] == ["solver", "solver", "cache", "peer"]
    assert res["reference"]["nfe"] == 7  # Heun, 4 Karras steps
    for rec in rows.values():
        for key in ("latency_s", "speedup", "psnr", "rmse"):
            assert math.isfinite(rec[key]) and rec[key] > 0, (rec["name"], key)
        assert rec["fdd"] is None and rec["accuracy"] is None  # not an embedded model
        # 2 rounds, up to 6 while the per-round ratios spread (a busy machine)
        assert len(rec["timing"]["runs_s"]) == res["timing"]["rounds"] in range(2, 7)
        assert rec["timing"]["batch"] == 2 and rec["cpu_s"] > 0 and rec["peak_mem_bytes"] > 0
        assert sum(rec["shares"].values()) == pytest.approx(1.0)
        assert min(rec["shares"].values()) > 0
    assert rows["ddim-4"]["speedup"] == 1.0
    for name in ("report.md", "pareto.png", "grid.png", "index.html"):
        assert (out / name).stat().st_size > 500, name
    md = (out / "report.md").read_text()
    header = "| method | family | NFE | ms/img | CPU ms/img | speedup"
    assert header in md and "| +-% | FDD | FDD/ref | acc % | PSNR dB | RMSE |" in md
    assert "diffusers DPM++2M-3" in md
    assert "where `ddim-4`'s time goes: text encoding" in md and "VAE decode" in md
    for column in ("ms/img", "speedup", "PSNR dB", "RMSE", "FDD", "acc %"):
        assert f"- **{column}**: " in md, column
    assert "round-robin" in md and "text encoding and VAE decode included" in md


def test_model_sources_are_sorted(sd_folder, tmp_path):
    assert resolve_model(None) == resolve_model("digits") == ("denoiser", None)
    assert resolve_model(str(sd_folder)) == ("pipeline", str(sd_folder))
    assert resolve_model(str(tmp_path)) == ("denoiser", str(tmp_path))  # unet/ + scheduler/
    assert resolve_model("my_pkg.models:build") == ("denoiser", "my_pkg.models:build")


def test_unknown_model_name_lists_the_shipped_ones(capsys):
    with pytest.raises(ConfigError, match="digits, mini-sd") as err:
        resolve_model("mini-sdxl")
    assert "module:function" in str(err.value) and "folder" in str(err.value)
    assert main(["demo", "--model", "mini-sdxl"]) == 2
    assert "the shipped models are digits, mini-sd" in capsys.readouterr().err


def test_pickled_pipeline_folder_is_refused(sd_folder, tmp_path, capsys):
    folder = tmp_path / "pickled"
    shutil.copytree(sd_folder, folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="pickled weights"):
        load_text_to_image(folder)
    assert main(["demo", "--model", str(folder), "--prompt", "a cat"]) == 2
    assert "safetensors only" in capsys.readouterr().err


def test_pipeline_needs_prompts_and_runs_pipeline_rows_only(sd_folder, capsys):
    assert main(["bench", "--model", str(sd_folder), "--row", "solver=ddim,steps=2"]) == 2
    assert "--prompt" in capsys.readouterr().err
    from diffusers import DDIMScheduler
    from tiny_sd import SD_SCHEDULER

    config = DDIMScheduler(**SD_SCHEDULER).config
    with pytest.raises(ConfigError, match="pipeline rows are solver, cache, peer"):
        PipelineRow(Row(method="student", student="progressive-4"), config, 2.0)
    with pytest.raises(ConfigError, match="unknown peer scheduler"):
        PipelineRow(Row(peer="NoSuchScheduler", steps=3), config, 2.0)


def test_mini_sd_folders_get_its_prompts_and_metrics(tmp_path):
    from diffspeed.models.minisd.train import MiniSDTraining
    from diffspeed.models.pipeline_scoring import MINI_SD, pipeline_scoring_for

    assert pipeline_scoring_for(tmp_path) is None
    saved = {f.name: f.default for f in fields(MiniSDTraining)}
    (tmp_path / "training.json").write_text(json.dumps(saved))
    assert pipeline_scoring_for(tmp_path) is MINI_SD
    prompts = MINI_SD.prompts(12)
    assert prompts[0] == prompts[10] == "a handwritten zero" and prompts[7] == "a handwritten seven"


def test_mini_sd_name_is_the_shipped_pipeline():
    from diffspeed.models import mini_sd_path
    from diffspeed.models.pipeline_scoring import MINI_SD, pipeline_scoring_for

    if not (mini_sd_path() / "model_index.json").is_file():
        pytest.skip("mini-sd is not installed in this checkout")
    assert resolve_model("mini-sd") == ("pipeline", str(mini_sd_path()))
    assert pipeline_scoring_for(mini_sd_path()) is MINI_SD

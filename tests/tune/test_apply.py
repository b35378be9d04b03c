"""A tuned file applies in one line: the Python API, `diffspeed sample`, `diffspeed bench` and a
diffusers pipeline."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST

import diffspeed
from diffspeed.cli import main
from diffspeed.tune import Candidate, TunedConfig, save_tuned


def _teacher_file(tmp_path, **kw):
    cand = Candidate("ddim", 2, "trailing", guidance=1.25, **kw)
    return save_tuned(TunedConfig(cand, "psnr>=20"), tmp_path / "tuned.json")


def test_apply_to_a_denoiser_matches_sample(tmp_path, toy):
    sig = tuple(diffspeed.schedules.get_sigmas(toy, "karras", 3).tolist())
    path = save_tuned(TunedConfig(Candidate("dpmpp_2m", 3, "ays", sig, 0.02)), tmp_path / "t.json")
    noise = diffspeed.seeded_noise(range(3), (1, 4, 4))
    run = diffspeed.apply(toy, path)
    x = run(noise)
    ref = diffspeed.sample(toy, noise, "dpmpp_2m", schedule=torch.tensor(sig, dtype=torch.float64),
                           time_shift=0.02)  # fmt: skip
    assert torch.equal(x, ref) and run.nfe == 3


def test_sample_command_applies_the_file(tmp_path):
    path = _teacher_file(tmp_path, cache={"method": "deepcache", "interval": 2})
    png = tmp_path / "g.png"
    args = ["sample", "--config", str(path), "--labels", "0-1", "--per-label", "1",
            "--out", str(png), "--threads", "1"]  # fmt: skip
    assert main(args) == 0 and png.is_file()


def test_bench_row_applies_the_file(tmp_path):
    from diffspeed.bench.config import BenchPlan, BenchSettings, parse_row_arg
    from diffspeed.bench.runner import run_bench

    path = _teacher_file(tmp_path)
    row = parse_row_arg(f"name=tuned,tuned={path}")
    assert row.kind == "tuned"
    base = {"solver": "ddim", "steps": 3}
    settings = BenchSettings(samples=10, batch_size=10, warmup=0, repeats=1, threads=1,
                             reference_steps=5, baseline=base)  # fmt: skip
    res = run_bench(BenchPlan(settings, (row,)), tmp_path / "out")
    rec = res["rows"]["tuned"]
    assert rec["nfe"] == 2 and math.isfinite(rec["psnr"])
    direct = parse_row_arg("name=d,solver=ddim,steps=2,schedule=trailing,guidance=1.25")
    res2 = run_bench(BenchPlan(settings, (direct,)), tmp_path / "out2")
    assert res2["rows"]["d"]["psnr"] == pytest.approx(rec["psnr"])


def _tiny_pipeline():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                                    prediction_type="v_prediction")  # fmt: skip
    return diffusers.DDPMPipeline(unet=unet, scheduler=sched)


def test_tuned_on_a_pipeline_model_applies_to_the_pipeline(tmp_path, small_space):
    from dataclasses import replace

    from diffspeed.integrations.diffusers import Scheduler

    pipe = _tiny_pipeline()
    den = diffspeed.from_diffusers(pipe.unet, pipe.scheduler)
    space = replace(small_space, caches=({"method": "deepcache", "interval": 2},))
    res = diffspeed.tune(den, "psnr=20", space=space, **FAST)
    path = res.save(tmp_path / "tuned.json")

    def run(**kw):
        out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np",
                   **kw)  # fmt: skip
        return torch.as_tensor(out.images)

    before = run(num_inference_steps=4)
    handle = diffspeed.apply(pipe, path)
    assert isinstance(pipe.scheduler, Scheduler)
    assert pipe.scheduler.config.solver == res.config.solver
    images = run(**handle.call_kwargs)
    assert images.shape == before.shape and torch.isfinite(images).all()
    assert len(pipe.scheduler.timesteps) >= handle.call_kwargs["num_inference_steps"]
    handle.remove()
    assert not isinstance(pipe.scheduler, Scheduler)
    assert torch.equal(run(num_inference_steps=4), before)


def test_pipeline_apply_installs_cache_and_tuned_sigmas(tmp_path):
    from diffspeed.core.steps import listeners_of

    pipe = _tiny_pipeline()
    den = diffspeed.from_diffusers(pipe.unet, pipe.scheduler)
    sig = tuple(diffspeed.schedules.get_sigmas(den, "karras", 3).tolist())
    cand = Candidate("dpmpp_2m", 3, "ays", sig, cache={"method": "deepcache", "interval": 2})
    path = save_tuned(TunedConfig(cand), tmp_path / "t.json")
    with diffspeed.apply(pipe, path) as handle:
        assert handle.call_kwargs == {"num_inference_steps": 3}
        pipe.scheduler.set_timesteps(3)
        assert torch.allclose(pipe.scheduler.sigmas, torch.tensor(sig, dtype=torch.float64))
        assert listeners_of(pipe.unet)
    assert not listeners_of(pipe.unet)


def test_pipeline_refuses_what_it_cannot_run(tmp_path):
    from diffspeed.errors import UnsupportedModelError

    pipe = _tiny_pipeline()
    shifted = save_tuned(TunedConfig(Candidate("ddim", 3, "trailing", time_shift=0.02)),
                         tmp_path / "s.json")  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="exposure-bias"):
        diffspeed.apply(pipe, shifted)
    student = save_tuned(TunedConfig(Candidate(student="progressive-1")), tmp_path / "p.json")
    with pytest.raises(UnsupportedModelError, match="sample_student"):
        diffspeed.apply(pipe, student)

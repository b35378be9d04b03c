"""The bench runner: every number of every row, the report files, plug-in row kinds, peers."""

from __future__ import annotations

import math

import pytest
import torch

from diffspeed.bench import BenchContext, Row, register_method
from diffspeed.bench.config import BenchPlan, BenchSettings
from diffspeed.bench.methods import METHODS, build_generator
from diffspeed.bench.report import pareto_front
from diffspeed.bench.runner import ModelOptions, load_model, run_bench
from diffspeed.errors import ConfigError
from diffspeed.models.io import load_weights


def test_results_hold_every_number(tiny_report):
    out, res = tiny_report
    assert res["order"] == ["ddim-4", "ddim-3", "dpm++2m-3 (diffusers)"]
    assert res["baseline"] == "ddim-4"
    rows = res["rows"]
    assert [rows[n]["nfe"] for n in res["order"]] == [4, 3, 3]
    assert rows["ddim-4"]["speedup"] == 1.0
    assert rows["dpm++2m-3 (diffusers)"]["family"] == "peer"
    for rec in rows.values():
        for key in ("latency_s", "fdd", "kid", "accuracy", "psnr", "rmse", "speedup"):
            assert math.isfinite(rec[key]), (rec["name"], key)
        assert rec["latency_s"] > 0 and rec["model_size_bytes"] > 1_000_000
        assert rec["peak_mem_bytes"] > 0 and rec["timing"]["batch"] == 1  # never 0 for a run
        assert rec["peak_mem_kind"] in ("rss_hwm", "rss_poll", "cuda_allocated")
        assert rec["cpu_s"] > 0 and rec["spread"] >= 0 and rec["cpu_speedup"] > 0
        x = load_weights(out / rec["samples_file"])["samples"]
        assert x.shape == (20, 1, 8, 8)
    t = res["timing"]
    assert t["threads"] == 1 and len(t["load_average"]) == 2 and t["rounds"] >= 1
    assert t["speedup_basis"] in ("wall", "cpu") and (t["warning"] is None) == (not t["busy"])
    m = res["manifest"]
    for key in ("versions", "torch_threads", "device", "seeds", "git", "reference_digest"):
        assert key in m
    assert m["torch_threads"] == 1 and m["versions"]["torch"] == torch.__version__
    assert res["reference"]["digest"] == m["reference_digest"]
    for name in ("report.md", "pareto.png", "grid.png", "index.html", "results.json"):
        assert (out / name).stat().st_size > 500, name
    md = (out / "report.md").read_text()
    assert "| method | family | NFE |" in md and "dpm++2m-3 (diffusers)" in md


def test_peer_ddim_matches_diffspeed_ddim():
    """A diffusers scheduler is driven on the same denoiser and the same noise: DDIM with
    trailing spacing and no clipping is the same algorithm as diffspeed's ddim."""
    ctx = load_model(ModelOptions(), 2.0, torch.device("cpu"))
    noise = torch.randn(6, *ctx.sample_shape)
    y = ctx.cond_spec.example_cond(6)
    a = build_generator(Row(solver="ddim", steps=5), ctx).generate(noise, y, list(range(6)))
    peer = Row(
        peer="DDIMScheduler",
        steps=5,
        options={"timestep_spacing": "trailing", "clip_sample": False},
    )
    gen = build_generator(peer, ctx)
    b = gen.generate(noise, y, list(range(6)))
    assert gen.nfe == 5
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


class _Const:
    """A stand-in 'student': one evaluation, returns a grey level per condition."""

    nfe = 1
    rounds = 1
    model_size_bytes = 1234

    def generate(self, noise, cond, seeds):
        (value,) = cond.values()
        return torch.tanh(noise) * 0.0 + (value.float() / 9 * 2 - 1).view(-1, 1, 1, 1)


def test_plug_in_row_kind(tmp_path):
    if "test-const" not in METHODS:

        @register_method("test-const", family="student")
        def _build(row: Row, ctx: BenchContext):
            return _Const()

    settings = BenchSettings(
        samples=20,
        batch_size=10,
        warmup=0,
        repeats=1,
        threads=1,
        reference_steps=10,
        baseline={"solver": "ddim", "steps": 2},
    )
    plan = BenchPlan(settings, (Row(name="const", method="test-const"),))
    res = run_bench(plan, tmp_path)
    rec = res["rows"]["const"]
    assert rec["family"] == "student" and rec["nfe"] == 1 and rec["model_size_bytes"] == 1234
    assert math.isfinite(rec["fdd"]) and rec["accuracy"] <= 1


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (0.5, 9.0)]
    assert pareto_front(pts) == [4, 0, 1, 3]


def test_diffusers_folder_model(tmp_path):
    """A user's model as a diffusers folder (unet/ + scheduler/) benches like the teacher:
    its conditioning is read from the UNet's config, the null class given with ``uncond``."""
    ctx = load_model(ModelOptions(), 1.0, torch.device("cpu"))
    ctx.denoiser.model.save_pretrained(tmp_path / "m" / "unet")
    from diffspeed.models.teacher import build_scheduler

    build_scheduler().save_pretrained(tmp_path / "m" / "scheduler")
    settings = BenchSettings(
        samples=10,
        batch_size=10,
        warmup=0,
        repeats=1,
        threads=1,
        reference_steps=5,
        baseline={"solver": "ddim", "steps": 2},
    )
    plan = BenchPlan(settings, (Row(solver="euler", steps=3, schedule="karras"),))
    teacher = ctx.cond_spec
    model = ModelOptions(source=str(tmp_path / "m"), uncond=dict(teacher.uncond))
    res = run_bench(plan, tmp_path / "out", model=model)
    assert res["manifest"]["cond_keys"] == list(teacher.keys)
    assert math.isfinite(res["rows"]["euler-3-karras"]["fdd"])
    loaded = load_model(model, 1.0, torch.device("cpu")).cond_spec
    for key, value in teacher.example_cond(25).items():
        assert torch.equal(loaded.example_cond(25)[key], value)


def test_diffusers_folder_without_uncond_refuses_guidance(tmp_path):
    ctx = load_model(ModelOptions(), 1.0, torch.device("cpu"))
    ctx.denoiser.model.save_pretrained(tmp_path / "m" / "unet")
    from diffspeed.models.teacher import build_scheduler

    build_scheduler().save_pretrained(tmp_path / "m" / "scheduler")
    user = load_model(ModelOptions(source=str(tmp_path / "m")), 2.0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--uncond"):
        user.guided(2.0)


def test_import_path_model_without_digit_metrics(tmp_path, monkeypatch):
    """A user's ``module:function`` denoiser: fidelity to its own reference, no digit metrics."""
    (tmp_path / "my_tiny_model.py").write_text(
        "import torch\n"
        "from diffspeed import VEDenoiser\n"
        "from diffspeed.core.contract import CondSpec\n\n\n"
        "def make():\n"
        "    den = VEDenoiser(lambda x, s: torch.tanh(x) * 0.5, 0.01, 20.0)\n"
        "    den.cond_spec = CondSpec(keys=(), uncond={}, sample_shape=(3, 4, 4))\n"
        "    return den\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = BenchSettings(
        samples=12,
        batch_size=6,
        warmup=0,
        repeats=1,
        threads=1,
        reference_steps=10,
        guidance=1.0,
        baseline={"solver": "euler", "steps": 8, "schedule": "karras"},
    )
    plan = BenchPlan(settings, (Row(name="heun-3", solver="heun", steps=3, schedule="karras"),))
    res = run_bench(plan, tmp_path / "out", model=ModelOptions(source="my_tiny_model:make"))
    rec = res["rows"]["heun-3"]
    assert rec["fdd"] is None and rec["accuracy"] is None
    assert math.isfinite(rec["psnr"]) and rec["rmse"] > 0 and rec["nfe"] == 5
    assert res["manifest"]["sample_shape"] == [3, 4, 4]
    assert (tmp_path / "out" / "pareto.png").is_file()


def test_uncond_option_overrides_the_teacher_spec_and_is_checked():
    ctx = load_model(ModelOptions(uncond={"class_labels": torch.tensor(3)}), 2.0, "cpu")
    assert int(ctx.cond_spec.uncond["class_labels"]) == 3
    with pytest.raises(ConfigError, match="does not take"):
        load_model(ModelOptions(uncond={"prompt": torch.tensor(0)}), 2.0, "cpu")

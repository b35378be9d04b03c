"""Bench keys quant / prune / compile / dtype / memory_format, and the CLI commands."""

import tempfile

import pytest
import torch

from diffspeed.bench.config import Row, parse_row_arg
from diffspeed.bench.methods import BenchContext, build_generator, family_of
from diffspeed.cli import build_parser
from diffspeed.errors import ConfigError, WeightsError
from diffspeed.models.teacher import load_teacher
from diffspeed.solvers import seeded_noise


def test_row_keys_parse_and_round_trip():
    row = parse_row_arg("solver=ddim,steps=4,quant.format=int8_weight,dtype=bfloat16")
    assert row.kind == "compress" and family_of(row) == "compress"
    assert row.quant == {"format": "int8_weight"} and row.dtype == "bfloat16"
    assert Row.from_dict(row.to_dict()) == row
    assert row.label == "ddim-4+int8_weight+bfloat16"
    assert parse_row_arg("solver=ddim,steps=4").kind == "solver"
    assert parse_row_arg("solver=ddim,prune=runs/p30").label == "ddim+p30"
    with pytest.raises(ConfigError, match="'quant' must be a table"):
        Row.from_dict({"solver": "ddim", "quant": "int8"})


def _ctx():
    den = load_teacher()
    return BenchContext(den, (1, 8, 8), 1.25, torch.device("cpu"), 4_456_836)


def test_compress_row_runs_quantized_with_a_cache_and_sizes():
    ctx = _ctx()
    row = parse_row_arg(
        "solver=ddim,steps=4,quant.format=int8_weight,quant.backend=fake,"
        "cache.method=deepcache,cache.interval=2,memory_format=channels_last"
    )
    gen = build_generator(row, ctx)
    cond = ctx.cond_spec.example_cond(2)
    x = gen.generate(seeded_noise([0, 1], (1, 8, 8)), cond, [0, 1])
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert gen.nfe == 4
    assert gen.model_size_bytes < ctx.model_size_bytes / 3
    assert gen.disk_size_bytes == gen.model_size_bytes
    # the bench's model is untouched: the row runs on a copy
    assert "weight" in ctx.denoiser.model.conv_in._parameters


def test_bad_compress_rows_are_refused():
    ctx = _ctx()
    with pytest.raises(ConfigError, match="supported"):
        build_generator(parse_row_arg("solver=ddim,steps=2,compile=fastest"), ctx)
    with pytest.raises(WeightsError, match="is not a folder"):
        build_generator(parse_row_arg("solver=ddim,steps=2,prune=/nonexistent"), ctx)
    with tempfile.TemporaryDirectory() as empty, pytest.raises(WeightsError, match="save_pruned"):
        build_generator(parse_row_arg(f"solver=ddim,steps=2,prune={empty}"), ctx)
    with pytest.raises(ConfigError, match="trajectories"):
        row = "solver=ddim,steps=2,quant.format=w8a8,quant.calibration=forward"
        build_generator(parse_row_arg(row), ctx)


def test_cli_commands_registered():
    args = build_parser().parse_args(
        ["quantize", "--format", "w8a8", "--act-groups", "4", "--keep", "conv_in,conv_out"]
    )
    assert args.format == "w8a8" and args.act_groups == 4 and args.keep == "conv_in,conv_out"
    args = build_parser().parse_args(["optimize", "--compile", "default", "--fullgraph"])
    assert args.compile == "default" and args.fullgraph


def test_a_compress_row_reaches_the_report_with_its_disk_column(tmp_path, monkeypatch):
    from diffspeed.bench.config import load_plan
    from diffspeed.bench.runner import run_bench

    monkeypatch.setenv("DIFFSPEED_CACHE", str(tmp_path / "cache"))
    toml = tmp_path / "b.toml"
    toml.write_text(
        "[settings]\nsamples = 10\nbatch_size = 10\nwarmup = 0\nrepeats = 1\nthreads = 1\n"
        'reference_steps = 4\nbaseline = {solver = "ddim", steps = 3}\n\n'
        '[[row]]\nname = "ddim-2+int8"\nsolver = "ddim"\nsteps = 2\n'
        'quant = {format = "int8_weight", backend = "fake"}\n'
    )
    run_bench(load_plan(toml), tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "disk MB" in report and "ddim-2+int8" in report

"""Bench configuration: TOML / command-line rows, and the errors bad input gets."""

from __future__ import annotations

import pytest
import torch

from diffspeed.bench.config import (
    BenchSettings,
    Row,
    demo_plan,
    load_plan,
    parse_plan,
    parse_row_arg,
)
from diffspeed.bench.methods import METHODS, build_generator
from diffspeed.bench.runner import ModelOptions, load_model, plan_rows
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError


def test_unknown_row_key_names_key_and_allowed(tmp_path, write_toml):
    path = write_toml(tmp_path / "b.toml", '[[row]]\nsolver = "ddim"\nstepz = 4\n')
    with pytest.raises(ConfigError) as e:
        load_plan(path)
    msg = str(e.value)
    assert "'stepz'" in msg and "row 1" in msg
    assert "steps" in msg and "solver" in msg and "cache" in msg  # the allowed keys


def test_unknown_settings_and_top_level_keys(tmp_path):
    with pytest.raises(ConfigError, match="'sample'.*allowed keys: samples"):
        parse_plan({"settings": {"sample": 10}})
    with pytest.raises(ConfigError, match="'rows'"):
        parse_plan({"rows": []})
    with pytest.raises(ConfigError, match="'repeats' must be an integer >= 1"):
        parse_plan({"settings": {"repeats": 0}})
    (tmp_path / "bad.toml").write_text("[[row]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_plan(tmp_path / "bad.toml")


def test_unknown_method_names_the_allowed_ones():
    plan = parse_plan({"row": [{"method": "warp-drive", "steps": 2}]})
    with pytest.raises(ConfigError) as e:
        plan_rows(plan)
    assert "'warp-drive'" in str(e.value)
    for name in ("cache", "peer", "solver"):
        assert name in str(e.value)


def test_duplicate_row_names_refused():
    with pytest.raises(ConfigError, match="duplicate row names"):
        parse_plan({"row": [{"solver": "ddim", "steps": 2}, {"solver": "ddim", "steps": 2}]})


@pytest.fixture(scope="module")
def ctx():
    return load_model(ModelOptions(), 2.0, torch.device("cpu"))


def test_unknown_solver_peer_and_peer_option(ctx):
    with pytest.raises(ConfigError, match="unknown solver 'warp'.*ddim"):
        build_generator(Row(solver="warp", steps=2), ctx)
    with pytest.raises(ConfigError, match="unknown peer scheduler 'Fast'.*DDIMScheduler"):
        build_generator(Row(peer="Fast", steps=2), ctx)
    with pytest.raises(ConfigError, match="no option.*'spacing'.*timestep_spacing"):
        build_generator(Row(peer="DDIMScheduler", steps=2, options={"spacing": 1}), ctx)
    gen = build_generator(Row(solver="ddim", steps=2, options={"order": 3}), ctx)
    with pytest.raises(ConfigError, match="no option"):
        gen.generate(torch.zeros(1, *ctx.sample_shape), ctx.cond_spec.example_cond(1), [0])


def test_row_arg_and_round_trip():
    r = parse_row_arg("solver=heun,steps=5,schedule=karras,guidance=1.5,schedule_options.rho=5")
    assert r.schedule_options == {"rho": 5} and r.schedule == "karras"
    assert r.kind == "solver" and r.steps == 5 and r.guidance == 1.5
    assert Row.from_dict(r.to_dict()) == r
    c = parse_row_arg("solver=ddim,steps=10,cache.method=deepcache,cache.interval=3")
    assert c.kind == "cache" and c.cache == {"method": "deepcache", "interval": 3}
    assert parse_row_arg("peer=UniPCMultistepScheduler,steps=5").kind == "peer"
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_row_arg("solver")
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        parse_row_arg("speed=11")
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        parse_row_arg("solver=ddim,steps=fast")


def test_demo_plan_rows_all_resolve():
    plan = demo_plan()
    assert isinstance(plan.settings, BenchSettings)
    rows = plan_rows(plan)
    assert rows[0].label == "ddim-50 (baseline)" and len(rows) > 3
    assert all(r.kind in METHODS for r in rows)


def test_user_model_that_does_not_load_says_why(tmp_path):
    with pytest.raises(ConfigError, match="not a teacher .safetensors file, a diffusers folder"):
        load_model(ModelOptions(source=str(tmp_path / "missing")), 1.0, torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no unet/ subfolder"):
        load_model(ModelOptions(source=str(tmp_path / "empty")), 1.0, torch.device("cpu"))
    (tmp_path / "broken" / "unet").mkdir(parents=True)
    (tmp_path / "broken" / "scheduler").mkdir()
    with pytest.raises(WeightsError, match="cannot load the diffusers model"):
        load_model(ModelOptions(source=str(tmp_path / "broken")), 1.0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod'"):
        load_model(ModelOptions(source="no_such_mod:make"), 1.0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_model(ModelOptions(source="diffspeed.toy:nope"), 1.0, torch.device("cpu"))
    with pytest.raises(UnsupportedModelError, match="not a denoiser"):
        load_model(ModelOptions(source="diffspeed.errors:DiffspeedError"), 1.0, "cpu")
    with pytest.raises(WeightsError, match="does not exist|missing"):
        load_model(ModelOptions(source=str(tmp_path / "t.safetensors")), 1.0, "cpu")


def test_cli_bad_input_exits_2_with_message(capsys):
    from diffspeed.cli import main

    assert main(["bench"]) == 2
    assert "nothing to run" in capsys.readouterr().err
    assert main(["bench", "--row", "solver=ddim,stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'stepz'" in err and "allowed keys" in err

"""The search: constraint met on validation, rejection, determinism, unreachable targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST

import diffspeed
from diffspeed.cli import main
from diffspeed.tune import search


def test_finds_a_config_meeting_the_bar_on_validation(toy, small_space):
    res = diffspeed.tune(toy, "psnr=25", space=small_space, **FAST)
    assert res.met and res.tuned.report["validation"]["value"] >= 25
    chosen = [t for t in res.trials if t.status == "chosen"]
    assert len(chosen) == 1 and chosen[0].candidate == res.config
    # no candidate that met the last rung and is faster was skipped
    faster = [t for t in res.trials if t.latency_s < chosen[0].latency_s and 1 in t.values]
    assert all(t.status.startswith(("dropped", "rejected")) for t in faster)
    cost = res.cost
    assert cost["nfe"] > 0 and cost["seconds"] > 0 and cost["candidates"] == len(res.trials)


def test_deterministic_given_a_seed(toy, small_space):
    a = diffspeed.tune(toy, "psnr=25", space=small_space, seed=3, **FAST)
    b = diffspeed.tune(toy, "psnr=25", space=small_space, seed=3, **FAST)
    assert a.config == b.config
    assert [(t.candidate, t.values, t.validation, t.status) for t in a.trials] == [
        (t.candidate, t.values, t.validation, t.status) for t in b.trials
    ]


def test_a_config_failing_validation_is_rejected(toy, small_space, monkeypatch):
    """The first candidate that passes tuning fails the re-check on validation seeds (forced):
    it is rejected and the next candidate is tried and validated."""
    real = search._validate
    calls = []

    def first_fails(s, trial, val):
        calls.append(trial.candidate.label)
        value = real(s, trial, val)
        return 0.0 if len(calls) == 1 else value

    monkeypatch.setattr(search, "_validate", first_fails)
    res = diffspeed.tune(toy, "psnr=25", space=small_space, **FAST)
    rejected = {t.candidate.label for t in res.trials if t.status == "rejected"}
    assert calls[0] in rejected and rejected == set(calls[:-1])
    assert res.met and res.config.label == calls[-1] != calls[0]
    assert set(res.tuned.report["rejected_in_validation"]) == rejected


def test_unreachable_constraint_returns_best_found(toy, small_space):
    res = diffspeed.tune(toy, "psnr=200", space=small_space, **FAST)
    assert not res.met
    assert "no configuration met psnr>=200" in res.message and "best found" in res.message
    assert res.tuned.report["met"] is False and res.tuned.report["validation"]["value"] < 200


def test_nfe_budget_is_respected(toy, small_space):
    res = diffspeed.tune(toy, "psnr=20", "nfe=3", space=small_space, **FAST)
    assert res.tuned.report["nfe"] <= 3 or not res.met


def test_cli_unreachable_exits_nonzero_and_writes_best(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_toy.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from conftest import make_toy as make\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "tuned.json"
    args = ["tune", "--model", "my_toy:make", "--quality", "psnr=200", "--solvers", "ddim",
            "--schedules", "trailing", "--tuned-schedules", "", "--max-nfe", "3", "--no-cache",
            "--no-shift", "--validation", "8", "--reference-steps", "20", "--out", str(out),
            "--report", str(tmp_path / "rep"), "--threads", "1", "--quiet"]  # fmt: skip
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "constraint psnr>=200 not met" in captured.err and "best found" in captured.out
    doc = json.loads(out.read_text())
    assert doc["report"]["met"] is False and doc["config"]["solver"] == "ddim"
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="pareto"' in html and "data:image/png;base64," in html


def test_bad_space_names_are_refused():
    from diffspeed.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown solver"):
        diffspeed.tune.SearchSpace(solvers=("nope",))
    with pytest.raises(ConfigError, match="stochastic"):
        diffspeed.tune.SearchSpace(solvers=("euler_a",))

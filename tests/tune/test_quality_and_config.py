"""Quality constraints, budgets and the tuned-config file format."""

from __future__ import annotations

import pytest
import torch

import diffspeed
from diffspeed.cli import main
from diffspeed.errors import ConfigError
from diffspeed.tune import (
    Candidate,
    TunedConfig,
    load_tuned,
    parse_budget,
    parse_quality,
    save_tuned,
)


def test_parse_quality_forms():
    assert parse_quality("psnr=30") == parse_quality("PSNR>=30")
    q = parse_quality("fdd-ratio=1.05")
    assert (q.metric, q.target, str(q)) == ("fdd-ratio", 1.05, "fdd-ratio<=1.05")
    assert q.passes(1.05) and not q.passes(1.06) and q.passes(1.1, rung=0)
    assert parse_quality("rmse<=0.05").passes(0.04)
    assert parse_quality("psnr=30").passes(29.5, rung=0) and not parse_quality("psnr=30").passes(
        29.5
    )


def test_unknown_metric_lists_the_allowed_ones(capsys):
    with pytest.raises(ConfigError, match="allowed: psnr.*rmse.*fdd-ratio"):
        parse_quality("ssim=0.9")
    assert main(["tune", "--quality", "ssim=0.9"]) == 2
    err = capsys.readouterr().err
    assert "unknown quality metric 'ssim'" in err and "fdd-ratio" in err and "psnr" in err


def test_budget_parsing():
    assert parse_budget(None).nfe is None
    assert parse_budget("nfe=8").nfe == 8 and parse_budget(6).nfe == 6
    assert parse_budget("latency=20ms").latency_s == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="nfe=N"):
        parse_budget("speed=fast")


def test_fdd_ratio_needs_a_metric(toy):
    with pytest.raises(ConfigError, match="fdd="):
        diffspeed.tune(toy, "fdd-ratio=1.05")


def test_tuned_file_round_trips(tmp_path, toy):
    sigmas = tuple(diffspeed.schedules.get_sigmas(toy, "trailing", 3).tolist())
    cand = Candidate("dpmpp_2m", 3, "dp", sigmas, 0.02, {"method": "deepcache", "interval": 2},
                     guidance=1.5, options={"lower_order_final": True})  # fmt: skip
    tuned = TunedConfig(cand, "psnr>=30", {"met": True})
    path = save_tuned(tuned, tmp_path / "t.json")
    back = load_tuned(path)
    assert back == tuned and back.config.label == cand.label
    assert load_tuned(tuned.to_json()) == tuned
    # the file doubles as a schedule JSON for diffspeed.sample
    noise = diffspeed.seeded_noise(range(2), (1, 4, 4))
    a = diffspeed.sample(toy, noise, "ddim", schedule=str(path))
    b = diffspeed.sample(toy, noise, "ddim", schedule=torch.tensor(sigmas, dtype=torch.float64))
    assert torch.equal(a, b)


def test_not_a_tuned_file(tmp_path):
    (tmp_path / "x.json").write_text('{"sigmas": [1, 0]}')
    with pytest.raises(ConfigError, match="not a diffspeed tuned config"):
        load_tuned(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="unknown key"):
        Candidate.from_dict({"solver": "ddim", "stepz": 3})


def test_latency_model_counts_cached_calls_at_their_fraction():
    from diffspeed.tune.latency import LatencyModel, _cache_key

    cache = {"method": "deepcache", "interval": 2}
    m = LatencyModel({"teacher": 0.01}, {"teacher": 0.002}, {_cache_key(cache): 0.25})
    assert m.estimate("teacher", 8, 8, None) == pytest.approx(0.082)
    assert m.estimate("teacher", 8, 4, cache) == pytest.approx(0.002 + 0.04 + 4 * 0.0025)

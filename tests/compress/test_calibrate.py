"""Timestep-aware calibration: only calibration seeds, per-noise-level groups, sensitivity."""

import copy

import pytest
import torch

import diffspeed
import diffspeed.solvers
from diffspeed.compress import (
    Quantize,
    calibrate,
    calibrate_forward,
    calibration_seeds,
    quantize,
)
from diffspeed.errors import ConfigError
from diffspeed.eval.metrics import psnr
from diffspeed.eval.reference import ReferenceSpec
from diffspeed.models.teacher import load_teacher
from diffspeed.solvers import seeded_noise


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


def test_calibration_sees_only_calibration_seeds(teacher, monkeypatch):
    seen = []
    real = diffspeed.solvers.seeded_noise

    def spy(seeds, shape, **kw):
        seen.extend(int(s) for s in seeds)
        return real(seeds, shape, **kw)

    monkeypatch.setattr(diffspeed.solvers, "seeded_noise", spy)
    cal = calibrate(teacher, Quantize(format="w8a8", calib_samples=16), steps=3)
    assert seen == cal.seeds == calibration_seeds(16)
    assert not set(seen) & set(ReferenceSpec(n=10_000).seeds())
    with pytest.raises(ConfigError, match="overlap the report set"):
        calibrate(teacher, Quantize(format="w8a8", calib_samples=16), steps=3, seeds=range(16))


def test_groups_follow_the_samplers_noise_levels(teacher):
    cfg = Quantize(format="w8a8", calib_samples=16, act_groups=3)
    cal = calibrate(teacher, cfg, steps=6)
    assert len(cal.edges) == 2 and cal.edges == sorted(cal.edges)
    r = cal.ranges["conv_in"]
    assert r.shape == (3, 2) and (r[:, 0] <= r[:, 1]).all()
    den = copy.deepcopy(teacher)
    handle = quantize(den, cfg, calibration=cal)
    assert set(handle.layers.values()) == {"fake:w8a8"}
    groups = []

    def record(info):
        groups.append(handle.group)

    noise = seeded_noise([10**12 + 99] * 2, (1, 8, 8))
    diffspeed.sample(den, noise, "ddim", 6, cond=den.cond_spec.example_cond(2), callback=record)
    assert groups[0] == 2 and groups[-1] == 0  # high noise first, low noise last
    assert handle.group is None  # outside a run: the range over all groups


def test_w8a8_stays_close_to_full_precision(teacher):
    cfg = Quantize(format="w8a8", calib_samples=16, act_groups=2)
    den = copy.deepcopy(teacher)
    quantize(den, cfg, calibration=calibrate(teacher, cfg, steps=4))
    noise = seeded_noise(calibration_seeds(4, base=7), (1, 8, 8))
    cond = teacher.cond_spec.example_cond(4)
    a = diffspeed.sample(den, noise, "ddim", 4, cond=cond)
    b = diffspeed.sample(teacher, noise, "ddim", 4, cond=cond)
    assert psnr(a, b) > 20


def test_forward_calibration_and_sensitivity(teacher):
    from diffspeed.models.digits import load_digits

    x0, y = load_digits("train")
    cfg = Quantize(format="w8a8", calibration="forward", calib_samples=16)
    cal = calibrate_forward(teacher, cfg, x0[:16], {"class_labels": y[:16]})
    assert cal.source == "forward" and cal.edges == []
    with pytest.raises(ConfigError, match="16 data samples"):
        calibrate_forward(teacher, cfg, x0[:8], {"class_labels": y[:8]})
    cfg = Quantize(format="w8a8", calib_samples=16, keep_sensitive=1)
    cal = calibrate(teacher, cfg, steps=2)
    assert len(cal.keep) == 1
    assert cal.keep[0] == max(cal.sensitivity, key=cal.sensitivity.get)
    handle = quantize(copy.deepcopy(teacher), cfg, calibration=cal)
    assert handle.layers[cal.keep[0]] == "kept"
    assert torch.isfinite(torch.tensor(list(cal.sensitivity.values()))).all()

"""Calibration picks the most aggressive setting that meets the PSNR target."""

import pytest
import torch

import diffspeed
from diffspeed.cache import DeepCache, TeaCache, calibrate
from diffspeed.cache.calibrate import fidelity_psnr
from diffspeed.errors import ConfigError
from diffspeed.models.teacher import guided_teacher, load_teacher


def test_deepcache_calibration_on_the_teacher():
    den = guided_teacher(2.0, load_teacher())
    noise = diffspeed.seeded_noise(range(900_000, 900_010), (1, 8, 8))
    cond = {"class_labels": torch.arange(10)}
    res = calibrate(
        den, "deepcache", target_psnr=28.0, steps=10, noise=noise, cond=cond, fixed={"branch": 1}
    )
    assert isinstance(res.config, DeepCache) and res.config.branch == 1
    passing = [t["value"] for t in res.trials if t["psnr"] >= 28.0]
    assert res.config.interval == max(passing, default=1)
    # the reported PSNR is what the chosen config really gives
    ref = diffspeed.sample(den, noise, "ddim", 10, cond=cond)
    with diffspeed.apply_cache(den, res.config):
        got = fidelity_psnr(diffspeed.sample(den, noise, "ddim", 10, cond=cond), ref)
    assert got == pytest.approx(res.psnr)
    assert res.psnr >= 28.0 or res.config.interval == 1


def test_teacache_polynomial_is_fitted_on_the_model():
    from cache_models import CASES

    case = CASES["dit"]()
    res = calibrate(
        case.den, "teacache", target_psnr=20.0, steps=8, noise=case.noise, cond=case.cond
    )
    assert isinstance(res.config, TeaCache)
    assert res.config.coefficients is not None and len(res.config.coefficients) == 3
    assert res.trials and res.trials[0]["value"] == 0.01


def test_calibrate_needs_a_denoiser():
    from cache_models import tiny_dit

    with pytest.raises(ConfigError, match="denoiser"):
        calibrate(tiny_dit(), "fora")
    with pytest.raises(ConfigError, match="unknown cache method"):
        calibrate(guided_teacher(2.0, load_teacher()), "deepcash")

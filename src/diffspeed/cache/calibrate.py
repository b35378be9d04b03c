"""Calibration: pick the most aggressive interval / threshold that meets a fidelity target.

The uncached sampler output on a few calibration noises is the reference; each candidate
setting runs the same sampler with the cache and is scored by PSNR against it. The largest
interval (or threshold) whose PSNR reaches ``target_psnr`` wins. Calibration noise seeds start
at :data:`CALIBRATION_SEED`, disjoint from the reference-set seeds of
:mod:`diffspeed.eval.reference` (which start at 0), so nothing is tuned on the report set.

TeaCache without coefficients is first run with threshold 0 (every evaluation full) while its
runtime records ``(modulated-input change, residual change)`` pairs; the rescaling polynomial
is fitted on those (:func:`diffspeed.cache.teacache.fit_coefficients`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffspeed.cache.hooks import CACHES, CacheConfig, apply_cache
from diffspeed.core.contract import cond_to, network_of
from diffspeed.errors import ConfigError

log = logging.getLogger("diffspeed")

#: First calibration noise seed (the reference sets use seeds from 0 upward).
CALIBRATION_SEED = 900_000

#: Default candidates: intervals for step-count methods, thresholds for adaptive ones.
INTERVALS = tuple(range(2, 11))
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.2)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found.

    Attributes:
        config: the chosen config (the "off" setting if no candidate met the target).
        psnr: its PSNR against the uncached output (inf for the off setting).
        target_psnr: the requested target.
        trials: ``{"value", "psnr", "full_fraction"}`` per candidate tried, in order.
    """

    config: CacheConfig
    psnr: float
    target_psnr: float
    trials: list[dict[str, float]] = field(default_factory=list)


def fidelity_psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB of ``x`` against ``ref`` for data spanning ``data_range`` (2 for [-1, 1])."""
    mse = float((x.double() - ref.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _knob(cls: type[CacheConfig]) -> str:
    names = {f.name for f in dataclasses.fields(cls)}
    for knob in ("interval", "threshold"):
        if knob in names:
            return knob
    raise ConfigError(f"cache method {cls.method!r} has nothing to calibrate")


def _default_noise(den: Any, n: int, seed: int) -> torch.Tensor:
    from diffspeed.solvers import seeded_noise

    shape = den.cond_spec.sample_shape
    if shape is None:
        cfg = getattr(network_of(den), "config", None)
        size, ch = getattr(cfg, "sample_size", None), getattr(cfg, "in_channels", None)
        if not isinstance(size, int) or not isinstance(ch, int):
            raise ConfigError("calibrate could not infer the sample shape; pass noise=[B, C, H, W]")
        shape = (ch, size, size)
    device = getattr(den, "device", torch.device("cpu"))
    return seeded_noise(range(seed, seed + n), tuple(shape)).to(device)


def calibrate(
    denoiser: Any,
    method: str,
    *,
    target_psnr: float = 30.0,
    solver: str = "ddim",
    steps: int = 20,
    schedule: str | None = None,
    noise: torch.Tensor | None = None,
    cond: dict[str, Any] | None = None,
    n: int = 8,
    seed: int = CALIBRATION_SEED,
    candidates: Sequence[float] | None = None,
    fixed: dict[str, Any] | None = None,
    data_range: float = 2.0,
) -> Calibration:
    """Choose the largest interval / threshold of ``method`` whose PSNR meets ``target_psnr``.

    Args:
        denoiser: a diffspeed denoiser (guided or not) wrapping a supported model.
        method: a cache method name (``"deepcache"``, ``"fora"``, ``"teacache"``, ...).
        target_psnr: required PSNR (dB) of the cached output against the uncached one.
        solver, steps, schedule: the sampler the cache will be used with.
        noise: calibration noise ``[B, ...]`` (default: ``n`` samples from seeds ``seed..``
            of the model's sample shape, on the model's device).
        cond: conditioning for the calibration batch (default: the model's example
            conditions, ``cond_spec.example_cond(B)``).
        candidates: values to try (default: intervals 2..10 or thresholds 0.01..1.2).
        fixed: other config fields (e.g. ``{"branch": 1}``); TeaCache ``coefficients`` are
            fitted here when not given.
        data_range: peak-to-peak range of the data for PSNR (2 for images in [-1, 1]).
    """
    from diffspeed.solvers import sample

    if not hasattr(denoiser, "noise_scale") or not hasattr(denoiser, "model"):
        raise ConfigError(
            "calibrate needs a diffspeed denoiser (e.g. diffspeed.from_diffusers(model, "
            "scheduler)), not a bare module: it runs the sampler to measure fidelity"
        )
    cls = CACHES[method]
    knob = _knob(cls)
    fixed = dict(fixed or {})
    if noise is None:
        noise = _default_noise(denoiser, n, seed)
    if cond is None:
        cond = cond_to(denoiser.cond_spec.example_cond(noise.shape[0]), noise.device)

    def run() -> torch.Tensor:
        return sample(denoiser, noise, solver, steps, schedule, cond=cond)

    ref = run()
    if cls.method == "teacache" and fixed.get("coefficients") is None:
        from diffspeed.cache.teacache import fit_coefficients

        with apply_cache(denoiser, cls(threshold=0.0, **fixed)) as h:
            h.runtime.trace = []
            run()
            fixed["coefficients"] = fit_coefficients(h.runtime.trace)
        log.info("calibrate: fitted TeaCache coefficients %s", fixed["coefficients"])
    values = (
        list(candidates)
        if candidates is not None
        else list(INTERVALS if knob == "interval" else THRESHOLDS)
    )
    best, best_psnr, trials, misses = None, math.inf, [], 0
    for value in sorted(values):
        cfg = cls(**{**fixed, knob: value})
        with apply_cache(denoiser, cfg) as h:
            p = fidelity_psnr(run(), ref, data_range)
            frac = h.stats["full"] / max(1, h.stats["evals"])
        trials.append({"value": float(value), "psnr": p, "full_fraction": frac})
        log.info("calibrate %s %s=%s: PSNR %.2f dB, full %.2f", method, knob, value, p, frac)
        if p >= target_psnr:
            best, best_psnr, misses = cfg, p, 0
        else:
            misses += 1
            if misses >= 2:
                break
    if best is None:
        log.warning(
            "calibrate: no %s setting met %.1f dB; returning the off setting", method, target_psnr
        )
        best = cls(**{**fixed, knob: 1 if knob == "interval" else 0.0})
    return Calibration(best, best_psnr, float(target_psnr), trials)

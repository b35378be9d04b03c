"""Adaptive-step DPM-Solver with an embedded error estimate (Lu et al. 2022a, Alg. 4-5;
Jolicoeur-Martineau et al. 2021's tolerance / step-size control).

Takes a tolerance instead of a step count: it integrates from the schedule's first sigma to
its last non-zero sigma (the grid in between is ignored; a one-step schedule means down to the
model's ``sigma_min``), then denoises if the schedule ends at 0. The NFE used and the
accepted / rejected step counts go to ``info``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import check_order, f64, report, sigma_batch
from diffspeed.solvers.registry import register_solver


def _dpmpp_step(den, x, s, lam_s, h, d_s, order, cond):
    """DPM-Solver++ singlestep pair from lambda_s to lambda_s + h: (lower, higher) order."""
    t = math.exp(-(lam_s + h))
    phi1 = -math.expm1(-h)
    if order == 2:
        x1 = f64(t / s, x) * x + f64(phi1, x) * d_s  # order 1, the error estimate's low end
        s_mid = math.exp(-(lam_s + h / 2))
        u = f64(s_mid / s, x) * x + f64(-math.expm1(-h / 2), x) * d_s
        d_mid = den(u, sigma_batch(s_mid, x), **cond)
        return x1, f64(t / s, x) * x + f64(phi1, x) * d_mid, 1  # DPM-Solver++(2S), r = 1/2
    # DPM-Solver++(3S) with r1 = 1/3, r2 = 2/3; the lower estimate is 2nd order from r1
    s1, s2 = math.exp(-(lam_s + h / 3)), math.exp(-(lam_s + 2 * h / 3))
    u1 = f64(s1 / s, x) * x + f64(-math.expm1(-h / 3), x) * d_s
    d1 = den(u1, sigma_batch(s1, x), **cond)
    big = 2 * h / 3
    phi_big = -math.expm1(-big)
    u2 = f64(s2 / s, x) * x + f64(phi_big, x) * d_s + f64((big - phi_big) * 3 / h, x) * (d1 - d_s)
    d2 = den(u2, sigma_batch(s2, x), **cond)
    base = f64(t / s, x) * x + f64(phi1, x) * d_s
    x_lo = base + f64((h - phi1) * 3 / h, x) * (d1 - d_s)
    x_hi = base + f64((h - phi1) * 1.5 / h, x) * (d2 - d_s)
    return x_lo, x_hi, 2


@register_solver("adaptive", "dpm_solver_adaptive", order=2, stepwise=False)
def adaptive(
    denoiser: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    generator: Any = None,
    callback: Callable | None = None,
    info: dict | None = None,
    order: int = 2,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    safety: float = 0.9,
    max_nfe: int = 1000,
) -> torch.Tensor:
    """Adaptive DPM-Solver-12 / -23 in data-prediction form.

    Each step computes a lower- and a higher-order solution from the same evaluations;
    ``E = ||x_hi - x_lo||_rms / max(atol, rtol * max(|x_lo|, |x_prev|))`` decides acceptance,
    and ``h <- safety * h * E^(-1/order)`` the next step (Lu et al. 2022a, Alg. 4).
    Tolerances: ``atol`` / ``rtol`` (both > 0; atol 0.0078 is one 8-bit level in [-1, 1]).
    """
    check_order("adaptive", order, (2, 3))
    if not (rtol > 0 and atol > 0):
        raise ConfigError(f"adaptive needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    cond = cond or {}
    s_end = float(sigmas[-2]) if float(sigmas[-1]) == 0 else float(sigmas[-1])
    if s_end == float(sigmas[0]):  # a one-step schedule: integrate down to the model's sigma_min
        s_end = denoiser.sigma_min
    lam_s, lam_end = -math.log(float(sigmas[0])), -math.log(s_end)
    h, nfe, accepted, rejected, d_s = h_init, 0, 0, 0, None
    while lam_s < lam_end - 1e-9 and nfe < max_nfe:
        s = math.exp(-lam_s)
        if d_s is None:  # the evaluation at the step start (reused after a rejection)
            d_s = denoiser(x, sigma_batch(s, x), **cond)
            nfe += 1
        h = min(h, lam_end - lam_s)
        x_lo, x_hi, evals = _dpmpp_step(denoiser, x, s, lam_s, h, d_s, order, cond)
        nfe += evals
        scale = torch.maximum(x_lo.abs(), x.abs()) * rtol
        err = ((x_hi - x_lo) / scale.clamp_min(atol)).pow(2).flatten(1).mean(1).sqrt().max()
        err = float(err)
        if err <= 1:
            x, lam_s, d_s, accepted = x_hi, lam_s + h, None, accepted + 1
            report(callback, accepted - 1, x, x_hi, s, math.exp(-lam_s))
        else:
            rejected += 1
        h = min(safety * h * max(err, 1e-10) ** (-1 / order), 5 * h)
    if float(sigmas[-1]) == 0:
        x = denoiser(x, sigma_batch(s_end, x), **cond)  # final denoising step
        nfe += 1
    if info is not None:
        info.update({"nfe_solver": nfe, "accepted": accepted, "rejected": rejected})
    return x

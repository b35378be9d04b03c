"""Stochastic samplers (reverse SDE): Euler-ancestral, DPM-Solver++ 2M/3M-SDE, SA-Solver.

Noise comes from ``generator`` turned into a per-sample noise sampler
(:func:`~diffspeed.solvers.noise.as_noise_sampler`), so a sample does not depend on the
batch it is drawn in. Without a generator the global torch RNG is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import Steps, check_order, exp_adams_weights, f64, lam, report
from diffspeed.solvers.noise import as_noise_sampler
from diffspeed.solvers.registry import register_solver


def _noise(generator: Any, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    sampler = as_noise_sampler(generator, x.shape[0])
    if sampler is None:
        return lambda: torch.randn_like(x)
    return lambda: sampler(x)


def _check_eta(eta: float) -> float:
    if not eta >= 0:
        raise ConfigError(f"eta (stochasticity) must be >= 0, got {eta}")
    return float(eta)


@register_solver("euler_ancestral", "euler_a", order=1, stochastic=True)
def euler_ancestral(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    eta: float = 1.0,
) -> Steps:
    """Euler-ancestral (k-diffusion; DDPM ancestral sampling for ``eta = 1``, Ho et al. 2020).

    Step deterministically to ``sigma_down`` then add fresh noise of std ``sigma_up`` with
    ``sigma_down^2 + sigma_up^2 = sigma_next^2``.
    """
    eta, noise = _check_eta(eta), _noise(generator, x)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        up = min(s_next, eta * math.sqrt(max(0.0, s_next**2 * (s**2 - s_next**2) / s**2)))
        down = math.sqrt(s_next**2 - up**2)
        x = d + f64(down / s, x) * (x - d)  # DDIM step to sigma_down
        if up > 0:
            x = x + f64(up, x) * noise()  # ancestral noise
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _dpmpp_sde(x, sigmas, generator, callback, eta, order) -> Steps:
    """DPM-Solver++(2M/3M)-SDE (Lu et al. 2022b sec. 5; k-diffusion's ``dpmpp_*m_sde``)."""
    eta, noise = _check_eta(eta), _noise(generator, x)
    hist: list[tuple[float, torch.Tensor]] = []  # (h of the step that ended there, D)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        if s_next == 0:
            x = d
        else:
            h = lam(s_next) - lam(s)
            he = h * (eta + 1)  # the SDE contracts faster: rate 1 + eta in lambda
            x = f64(math.exp(-he), x) * x + f64(-math.expm1(-he), x) * d
            phi2 = -math.expm1(-he) / he - 1  # = -(phi_2 of k-diffusion)
            if order == 3 and len(hist) >= 2:
                r0, r1 = hist[-1][0] / h, hist[-2][0] / h
                d1_0 = (d - hist[-1][1]) / r0
                d1_1 = (hist[-1][1] - hist[-2][1]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi3 = -phi2 / he - 0.5
                x = x - f64(phi2, x) * d1 - f64(phi3, x) * d2
            elif len(hist) >= 1:
                x = x - f64(phi2, x) * (d - hist[-1][1]) / (hist[-1][0] / h)
            if eta:
                x = x + noise() * f64(s_next * math.sqrt(-math.expm1(-2 * eta * h)), x)
            hist = (hist + [(h, d)])[-2:]
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


@register_solver("dpmpp_2m_sde", order=1, stochastic=True)
def dpmpp_2m_sde(x, sigmas, *, generator=None, callback=None, eta: float = 1.0) -> Steps:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b; ``eta=0`` is the ODE solver, Heun-type form)."""
    return (yield from _dpmpp_sde(x, sigmas, generator, callback, eta, 2))


@register_solver("dpmpp_3m_sde", order=1, stochastic=True)
def dpmpp_3m_sde(x, sigmas, *, generator=None, callback=None, eta: float = 1.0) -> Steps:
    """DPM-Solver++(3M) SDE (k-diffusion's third-order multistep SDE sampler)."""
    return (yield from _dpmpp_sde(x, sigmas, generator, callback, eta, 3))


@register_solver("sa_solver", order=1, stochastic=True)
def sa_solver(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    tau: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
) -> Steps:
    """SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023, Alg. 1, data form).

    ``x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + int (1+tau^2) e^{-(1+tau^2)(lambda_t-l)} D(l) dl
    + sigma_t sqrt(1 - e^{-2 tau^2 h}) xi``; the predictor interpolates the last
    ``predictor_order`` data predictions (Lagrange in lambda), the corrector additionally the
    one at the predicted point (reused by the next step, so NFE = steps). ``tau = 0`` is a
    deterministic Adams-type exponential integrator.
    """
    if not tau >= 0:
        raise ConfigError(f"tau must be >= 0, got {tau}")
    check_order("sa_solver predictor", predictor_order, (1, 2, 3, 4))
    check_order("sa_solver corrector", corrector_order, (0, 1, 2, 3, 4))
    noise, rate = _noise(generator, x), 1 + tau**2
    hist: list[tuple[float, torch.Tensor]] = []  # (lambda, D) newest last
    x_s = s_prev = xi = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        if corrector_order and x_s is not None:  # SA-Corrector: redo the last step with D(x)
            nodes = (hist + [(lam(s), d)])[-corrector_order:]
            x = _sa_step(x_s, s_prev, s, nodes, tau, rate, xi)
        hist = (hist + [(lam(s), d)])[-max(predictor_order, corrector_order) :]
        if s_next == 0:
            x = d
        else:  # SA-Predictor
            x_s, s_prev = x, s
            xi = noise() if tau > 0 else None
            x = _sa_step(x, s, s_next, hist[-predictor_order:], tau, rate, xi)
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _sa_step(x, s, t, nodes, tau, rate, xi):
    h = lam(t) - lam(s)
    w = exp_adams_weights([n for n, _ in nodes], lam(s), lam(t), rate)
    out = f64(t / s * math.exp(-(tau**2) * h), x) * x
    out = out + sum(f64(wj, x) * dj for wj, (_, dj) in zip(w, nodes, strict=True))
    if xi is not None:
        out = out + f64(t * math.sqrt(-math.expm1(-2 * tau**2 * h)), x) * xi
    return out

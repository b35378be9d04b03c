"""Multistep probability-flow ODE solvers: one network evaluation per step, history reused.

DPM-Solver++ 2M/3M (Lu et al. 2022b), UniPC (Zhao et al. 2023), DEIS tAB (Zhang & Chen 2023),
PLMS/PNDM (Liu et al. 2022) and iPNDM (Zhang & Chen 2023, App. E). All in the VE convention
with ``lambda = -log(sigma)``; the history lives in local lists. Each is a generator in the
stepwise form of :mod:`diffspeed.solvers.base`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import (
    Steps,
    check_order,
    check_threshold,
    f64,
    lam,
    multistep_order,
    report,
    threshold,
)
from diffspeed.solvers.registry import register_solver


def _dpmpp_multistep(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    order: int = 2,
    lower_order_final: bool = True,
    dynamic_threshold: float = 0.0,
    strict_order: bool = False,
) -> Steps:
    """DPM-Solver++ multistep with data prediction (Lu et al. 2022b, Alg. 2; 3M from eq. 17).

    ``x_t = (sigma_t/sigma_s) x_s + (1 - e^{-h}) D0 + ...`` with divided differences of past
    data predictions in ``lambda`` (diffusers' "midpoint" form). ``dynamic_threshold`` is the
    Imagen quantile ratio (0 = off).

    The 3M update of the reference code and diffusers weights the second divided difference
    ``D2 ~ h^2 D''/2`` by ``phi_3 = (e^{-h} - 1 + h)/h^2 - 1/2 ~ h/6`` where the exact integral
    needs ``2 phi_3``; that makes 3M globally 2nd order (measured in the tests).
    ``strict_order=True`` uses ``2 phi_3`` (true 3rd order); the default keeps diffusers parity.
    """
    check_order("dpmpp multistep", order, (1, 2, 3))
    ratio, n = check_threshold(dynamic_threshold), len(sigmas) - 1
    hist: list[tuple[float, torch.Tensor]] = []  # (lambda_i, D_i), newest last
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        d = threshold(d, ratio)
        hist = (hist + [(lam(s), d)])[-order:]
        o = multistep_order(i, n, order, lower_order_final, s_next == 0)
        if s_next == 0:
            x = d  # first-order step to sigma 0 lands on the data prediction
        else:
            h = lam(s_next) - lam(s)
            phi1 = -math.expm1(-h)  # 1 - e^{-h}
            x = f64(s_next / s, x) * x + f64(phi1, x) * d  # DPM-Solver++(1), i.e. DDIM
            if o >= 2:
                r0 = (lam(s) - hist[-2][0]) / h
                d1_0 = (d - hist[-2][1]) / r0
            if o == 2:
                x = x + f64(0.5 * phi1, x) * d1_0  # midpoint correction
            elif o == 3:
                r1 = (hist[-2][0] - hist[-3][0]) / h
                d1_1 = (hist[-2][1] - hist[-3][1]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # first derivative estimate
                d2 = (d1_0 - d1_1) / (r0 + r1)  # second derivative estimate
                phi3 = (h - phi1) / h**2 - 0.5
                x = x + f64(1 - phi1 / h, x) * d1 - f64(phi3 * (2 if strict_order else 1), x) * d2
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _dpmpp_variant(order: int, doc: str) -> Callable:
    def solver(x, sigmas, *, generator=None, callback=None, lower_order_final: bool = True,
               dynamic_threshold: float = 0.0, strict_order: bool = False) -> Steps:  # fmt: skip
        return (yield from _dpmpp_multistep(
            x, sigmas, generator=generator, callback=callback, order=order,
            lower_order_final=lower_order_final, dynamic_threshold=dynamic_threshold,
            strict_order=strict_order,
        ))  # fmt: skip

    solver.__doc__ = doc
    return solver


dpmpp_2m = register_solver("dpmpp_2m", "dpm_solver_pp_2m", order=2)(
    _dpmpp_variant(2, "DPM-Solver++(2M): 2nd-order multistep, data prediction (Lu et al. 2022b).")
)
dpmpp_3m = register_solver("dpmpp_3m", "dpm_solver_pp_3m", order=2)(
    _dpmpp_variant(3, "DPM-Solver++(3M): 3rd-order multistep, data prediction (Lu et al. 2022b).")
)


def _unipc_coeffs(rks: list[float], h: float, order: int, variant: str) -> tuple[float, np.ndarray]:
    """``B(h)`` and the solution of ``R rho = b`` of UniPC (Zhao et al. 2023, eq. 8 / Alg. 1)."""
    hh = -h  # data prediction
    h_phi_k = math.expm1(hh) / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks_all = np.array([*rks, 1.0])
    rows, b, fact = [], [], 1
    for k in range(1, order + 1):
        rows.append(rks_all ** (k - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return b_h, (np.array(rows), np.array(b))


@register_solver("unipc", "unipc_bh2", order=4)
def unipc(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    order: int = 3,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    dynamic_threshold: float = 0.0,
) -> Steps:
    """UniPC: unified predictor (UniP-p) and corrector (UniC) with data prediction.

    Zhao et al. 2023, Algorithms 2-3 with the B(h) choices ``bh1`` (``B(h) = h``) and ``bh2``
    (``B(h) = e^h - 1``). Any order >= 1. The corrector reuses the model output at the
    predicted point, so it costs no extra evaluation (NFE = steps).
    """
    if variant not in ("bh1", "bh2"):
        raise ConfigError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    check_order("unipc", order, range(1, 9))
    ratio, n = check_threshold(dynamic_threshold), len(sigmas) - 1
    hist: list[tuple[float, torch.Tensor]] = []  # (lambda_i, D_i) newest last
    prev = None  # (x_s, sigma_s, order used) of the last predictor step, for the corrector
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        d = threshold(d, ratio)
        # UniC: correct the point just predicted using the fresh model output (no extra NFE)
        if corrector and prev is not None:
            x = _uni_update(prev[0], prev[1], s, hist, prev[2], variant, d_new=d)
        hist = (hist + [(lam(s), d)])[-order:]
        o = min(order, n - i) if lower_order_final else order
        o = min(o, len(hist))
        prev = (x, s, o)
        # UniP: predict the next point from the history
        x = d if s_next == 0 else _uni_update(x, s, s_next, hist, o, variant)
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _uni_update(x, s, t, hist, o, variant, d_new=None):
    """One UniP step (``d_new`` None) or UniC step from ``(x, s)`` to ``t`` of order ``o``.

    For UniP ``hist[-1]`` is the output at ``s``; for UniC ``hist[-1]`` is too and ``d_new`` is
    the output at ``t`` (the point being corrected).
    """
    h = lam(t) - lam(s)
    lam0, m0 = hist[-1]
    phi1 = math.expm1(-h)
    x_t = f64(t / s, x) * x - f64(phi1, x) * m0  # DPM-Solver++(1) part
    # both UniP and UniC of order o use the o - 1 outputs before m0 (divided differences)
    rks = [(hist[-(k + 1)][0] - lam0) / h for k in range(1, o)]
    d1s = [(hist[-(k + 1)][1] - m0) / r for k, r in zip(range(1, o), rks, strict=True)]
    b_h, (rmat, b) = _unipc_coeffs(rks, h, o, variant)
    if d_new is None:
        if not d1s:
            return x_t
        rhos = [0.5] if o == 2 else np.linalg.solve(rmat[:-1, :-1], b[:-1]).tolist()
        res = sum(f64(r, x) * d_ for r, d_ in zip(rhos, d1s, strict=True))
        return x_t - f64(b_h, x) * res
    rhos = [0.5] if o == 1 else np.linalg.solve(rmat, b).tolist()
    res = sum((f64(r, x) * d_ for r, d_ in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x))
    return x_t - f64(b_h, x) * (res + f64(rhos[-1], x) * (d_new - m0))


@register_solver("unipc_bh1", order=4)
def unipc_bh1(x, sigmas, *, generator=None, callback=None, order: int = 3,
              corrector: bool = True, lower_order_final: bool = True,
              dynamic_threshold: float = 0.0) -> Steps:  # fmt: skip
    """UniPC with ``B(h) = h`` (bh1; Zhao et al. 2023), better for unconditional sampling."""
    return (yield from unipc(
        x, sigmas, callback=callback, order=order, variant="bh1", corrector=corrector,
        lower_order_final=lower_order_final, dynamic_threshold=dynamic_threshold,
    ))  # fmt: skip


def _eps(x: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    return (x - d) / f64(s, x)  # noise prediction from the data prediction


@register_solver("deis", "deis_tab", order=3)
def deis(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> Steps:
    """DEIS tAB (Zhang & Chen 2023, eq. 15): Adams-Bashforth on eps, exact in sigma.

    The noise prediction is interpolated by a Lagrange polynomial in ``log sigma`` through the
    last ``order`` outputs and integrated over ``sigma`` (``dx/dsigma = eps``); the weights are
    computed by Gauss-Legendre quadrature in float64.
    """
    check_order("deis", order, (1, 2, 3, 4))
    n = len(sigmas) - 1
    hist: list[tuple[float, torch.Tensor]] = []  # (log sigma_i, eps_i)
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        hist = (hist + [(math.log(s), _eps(x, d, s))])[-order:]
        o = multistep_order(i, n, order, lower_order_final, s_next == 0)
        if s_next == 0:
            x = d
        else:
            # weights w_j = int_{s}^{s_next} L_j(log rho) d rho, substituted rho = e^u
            w = _log_lagrange_weights([u for u, _ in hist[-o:]], math.log(s), math.log(s_next))
            x = x + sum(f64(wj, x) * e for wj, (_, e) in zip(w, hist[-o:], strict=True))
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _log_lagrange_weights(nodes: list[float], u_s: float, u_t: float) -> np.ndarray:
    """``int_{u_s}^{u_t} e^u L_j(u) du`` by 24-point Gauss-Legendre (exact to rounding)."""
    from diffspeed.solvers.base import _GL_NODES, _GL_WEIGHTS

    u = (u_t - u_s) / 2 * _GL_NODES + (u_t + u_s) / 2
    kernel = np.exp(u) * (u_t - u_s) / 2 * _GL_WEIGHTS
    out = []
    for j, uj in enumerate(nodes):
        basis = np.ones_like(u)
        for k, uk in enumerate(nodes):
            if k != j:
                basis *= (u - uk) / (uj - uk)
        out.append(float((kernel * basis).sum()))
    return np.array(out)


#: Adams-Bashforth coefficients for equal steps, newest first (orders 1-4).
_AB = {
    1: (1.0,),
    2: (1.5, -0.5),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _ab(eps: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the eps history (oldest first)."""
    return sum(c * e for c, e in zip(_AB[len(eps)], reversed(eps), strict=False))


@register_solver("plms", "pndm", order=2, extra_evals=1)
def plms(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
) -> Steps:
    """PLMS / PNDM with pseudo linear multistep steps (Liu et al. 2022, eq. 12; diffusers'
    ``PNDMScheduler(skip_prk_steps=True)``).

    The first step is a pseudo improved-Euler step (one extra evaluation, NFE = steps + 1);
    then 4th-order Adams-Bashforth on eps with the DDIM transfer ``x' = x + (sigma' - sigma)
    eps``. Equal-step coefficients: order 4 on steps uniform in sigma.
    """
    n = len(sigmas) - 1
    eps: list[torch.Tensor] = []
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        e = _eps(x, d, s)
        if i == 0 and s_next > 0:
            # pseudo improved Euler: predict with e, re-evaluate, average
            x_pred, d2 = yield x + f64(s_next - s, x) * e, s_next
            e2 = _eps(x_pred, d2, s_next)
            eps = [e]
            x = x + f64(s_next - s, x) * (e + e2) / 2
        else:
            eps = (eps + [e])[-4:]
            x = x + f64(s_next - s, x) * _ab(eps)
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


@register_solver("ipndm", order=2)
def ipndm(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    order: int = 4,
) -> Steps:
    """Improved PNDM (Zhang & Chen 2023, App. E): Adams-Bashforth on eps with a lower-order
    multistep warm-up instead of PNDM's extra evaluations (NFE = steps).
    """
    check_order("ipndm", order, (1, 2, 3, 4))
    n = len(sigmas) - 1
    eps: list[torch.Tensor] = []
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x, d = yield x, s
        eps = (eps + [_eps(x, d, s)])[-order:]
        x = x + f64(s_next - s, x) * _ab(eps)
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x

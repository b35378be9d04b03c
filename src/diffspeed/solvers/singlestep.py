"""Singlestep DPM-Solver (noise prediction, Lu et al. 2022a) and DPM-Solver++ 2S/3S (data
prediction, Lu et al. 2022b).

The schedule lists every evaluation point: a step of order ``k`` spans ``k`` consecutive
intervals of ``sigmas``, its intermediate points are the grid points inside it (on a
log-SNR-uniform grid these are Lu et al.'s ``r = 1/2`` and ``r = 1/3, 2/3``), so NFE =
``len(sigmas) - 1`` exactly as in diffusers' ``DPMSolverSinglestepScheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import (
    Steps,
    check_order,
    check_threshold,
    f64,
    lam,
    report,
    threshold,
)
from diffspeed.solvers.registry import register_solver


def singlestep_orders(n: int, order: int, lower_order_final: bool, to_zero: bool) -> list[int]:
    """Per-interval orders ``[1, 2, (3), 1, 2, ...]`` (diffusers' ``get_order_list``)."""
    if lower_order_final:
        full, rest = divmod(n, order)
        if order == 3 and rest == 0:
            orders = [1, 2, 3] * (full - 1) + [1, 2, 1]
        elif order == 2 and rest == 0:
            orders = [1, 2] * (full - 1) + [1, 1]
        else:
            orders = list(range(1, order + 1)) * full + list(range(1, rest + 1))
    else:
        if n % order:
            raise ConfigError(
                f"singlestep order {order} without lower_order_final needs steps divisible by "
                f"{order}, got {n}"
            )
        orders = list(range(1, order + 1)) * (n // order)
    if to_zero:
        orders[-1] = 1  # the step to sigma 0 is first order (infinite log-SNR step)
    return orders


def _update(base, sb, t, nodes, outs, data: bool):
    """Order-``len(outs)`` singlestep update from ``(base, sb)`` to sigma ``t``.

    ``nodes`` are the lambdas of the evaluation points (first = base), ``outs`` the data
    predictions (``data``) or noise predictions there. diffusers' "midpoint" forms.
    """
    o = len(outs)
    if t == 0:
        return outs[-1] if data else base - f64(sb, base) * outs[-1]
    h = lam(t) - nodes[0]
    phi1 = -math.expm1(-h)  # 1 - e^{-h}
    if data:
        x = f64(t / sb, base) * base + f64(phi1, base) * outs[0]
    else:
        x = base - f64(sb - t, base) * outs[0]  # sigma_t (e^h - 1) = sigma_b - sigma_t
    if o == 2:
        d1 = (outs[1] - outs[0]) / ((nodes[1] - nodes[0]) / h)
        x = x + f64(0.5 * phi1 if data else -0.5 * (sb - t), x) * d1
    elif o == 3:
        d1 = (outs[2] - outs[0]) / ((nodes[2] - nodes[0]) / h)
        x = x + f64(1 - phi1 / h if data else -((sb - t) / h - t), x) * d1
    return x


def dpm_solver_singlestep(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    order: int = 3,
    prediction: str = "noise",
    lower_order_final: bool = True,
    dynamic_threshold: float = 0.0,
) -> Steps:
    """Singlestep DPM-Solver-k (``prediction="noise"``, Lu et al. 2022a, Alg. 1-2) or
    DPM-Solver++ kS (``"data"``, Lu et al. 2022b, Alg. 1), k = ``order`` in 1..3.
    """
    check_order("dpm_solver singlestep", order, (1, 2, 3))
    if prediction not in ("noise", "data"):
        raise ConfigError(f"prediction must be 'noise' or 'data', got {prediction!r}")
    data = prediction == "data"
    ratio, n = check_threshold(dynamic_threshold), len(sigmas) - 1
    orders = singlestep_orders(n, order, lower_order_final, float(sigmas[-1]) == 0)
    base, sb, nodes, outs = x, float(sigmas[0]), [], []
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if orders[i] == 1:  # a new step starts here
            base, sb, nodes, outs = x, s, [], []
        x, d = yield x, s
        if orders[i] == 1:
            base = x  # the point the step starts from (as handed back by the driver)
        d = threshold(d, ratio)
        nodes.append(lam(s))
        outs.append(d if data else (x - d) / f64(s, x))
        x = _update(base, sb, s_next, nodes, outs, data)
        report(callback, i, x, d, sigmas[i], sigmas[i + 1])
    return x


def _variant(order: int, prediction: str, doc: str) -> Callable:
    def solver(x, sigmas, *, generator=None, callback=None, lower_order_final: bool = True,
               dynamic_threshold: float = 0.0) -> Steps:  # fmt: skip
        return (yield from dpm_solver_singlestep(
            x, sigmas, callback=callback, order=order, prediction=prediction,
            lower_order_final=lower_order_final, dynamic_threshold=dynamic_threshold,
        ))  # fmt: skip

    solver.__doc__ = doc
    return solver


register_solver("dpm_solver", order=3)(dpm_solver_singlestep)
for _k in (1, 2, 3):
    register_solver(f"dpm_solver_{_k}", order=_k)(
        _variant(_k, "noise", f"DPM-Solver-{_k}: singlestep, noise prediction (Lu et al. 2022a).")
    )
for _k in (2, 3):
    register_solver(f"dpmpp_{_k}s", order=_k)(
        _variant(_k, "data", f"DPM-Solver++({_k}S): singlestep, data prediction (Lu et al. 2022b).")
    )

"""First- and second-order probability-flow ODE solvers in the VE convention.

The ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 3 with
``s(t) = 1``). Each solver is a generator in the stepwise form of :mod:`diffspeed.solvers.base`:
``x, d = yield x, sigma`` asks for one denoised estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffspeed.solvers.base import Steps, report
from diffspeed.solvers.registry import register_solver


@register_solver("euler", "ddim", order=1)
def euler(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
) -> Steps:
    """Euler on the PF-ODE in VE form, which is exactly DDIM (Song et al. 2021, eq. 13).

    ``x_next = x0_hat + sigma_next / sigma * (x - x0_hat)``.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x, d = yield x, s  # x0 estimate at sigma_i
        x = d + (s_next / s).to(x.dtype) * (x - d)  # move along the straight line to sigma_next
        report(callback, i, x, d, s, s_next)
    return x


@register_solver("heun", order=2, evals_per_step=2, saves_last_eval=True)
def heun(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
) -> Steps:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1, deterministic).

    The step to sigma 0 is a plain Euler step (no second evaluation at sigma 0).
    """
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x, d = yield x, s
        slope = (x - d) / s.to(x.dtype)  # dx/dsigma at sigma_i
        x_euler = x + (s_next - s).to(x.dtype) * slope  # Euler predictor
        if s_next == 0:
            x = x_euler
        else:
            x_euler, d2 = yield x_euler, s_next
            slope2 = (x_euler - d2) / s_next.to(x.dtype)  # slope at the predicted point
            x = x + (s_next - s).to(x.dtype) * (slope + slope2) / 2  # trapezoidal corrector
        report(callback, i, x, d, s, s_next)
    return x

"""Helpers shared by the solvers: the stepwise form and its driver, step reporting, log-SNR,
orders, quadrature, thresholding.

Everything is in the VE convention ``x = x0 + sigma * n`` with ``lambda = -log(sigma)`` (the
half log-SNR of DPM-Solver; for a VP model ``lambda = log(alpha_t / sigma_t)``). Written this
way, every VP exponential-integrator formula becomes the VP one with ``alpha_t = 1``.

**The stepwise form.** A solver is written once, as a generator that asks for one network
evaluation at a time::

    x, d = yield x, sigma      # "denoise x at sigma"; receive the point used and D(x, sigma)

It never sees the network, the conditioning or eps/v. Two drivers run it: :func:`drive`
(``diffspeed.sample``: calls the denoiser and sends back the same ``x``) and the diffusers
``Scheduler`` (``step(model_output, t, sample)``: sends back the pipeline's ``sample``, which an
img2img start, an inpainting blend or a callback may have changed). Multistep history lives in
the generator's local variables, so it survives between ``step`` calls at O(1) work per step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch

from diffspeed.errors import ConfigError

#: A stepwise solver: yields ``(x, sigma)`` to be denoised, receives ``(x, D(x, sigma))``,
#: returns the final sample.
Steps = Generator[tuple[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def drive(steps: Callable[..., Steps]) -> Callable[..., torch.Tensor]:
    """The functional form of a stepwise solver: ``fn(denoiser, x, sigmas, *, cond, generator,
    callback, **options) -> x``, calling ``denoiser`` at every point the solver asks for.

    A solver that declares a ``sigma_min`` keyword gets the denoiser's smallest noise level.
    """
    wants_sigma_min = "sigma_min" in inspect.signature(steps).parameters

    @functools.wraps(steps)
    def solve(
        denoiser: Any,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        cond: dict | None = None,
        generator: Any = None,
        callback: Callable | None = None,
        **options: Any,
    ) -> torch.Tensor:
        cond = cond or {}
        if wants_sigma_min:
            options["sigma_min"] = float(denoiser.sigma_min)
        run = steps(x, sigmas, generator=generator, callback=callback, **options)
        try:
            point, sigma = next(run)
            while True:
                d = denoiser(point, sigma_batch(sigma, point), **cond)
                point, sigma = run.send((point, d))
        except StopIteration as done:
            return done.value

    return solve


def report(callback: Callable | None, i: int, x, denoised, sigma, sigma_next) -> None:
    """Call a user callback with the state after step ``i`` (k-diffusion's dict form)."""
    if callback is not None:
        callback({"i": i, "x": x, "denoised": denoised, "sigma": sigma, "sigma_next": sigma_next})


def sigma_batch(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar float64 sigma as a ``[B]`` tensor on ``x``'s device."""
    return torch.as_tensor(sigma, dtype=torch.float64).to(x.device).expand(x.shape[0])


def lam(sigma: float) -> float:
    """``lambda = -log(sigma)`` (``+inf`` at sigma 0)."""
    return math.inf if sigma == 0 else -math.log(sigma)


def check_order(solver: str, order: int, allowed: Sequence[int]) -> int:
    """Validate a solver's ``order`` option."""
    if isinstance(order, bool) or not isinstance(order, int) or order not in allowed:
        raise ConfigError(
            f"{solver} supports order {', '.join(map(str, allowed))}, got {order!r}; "
            "pick one of those (or a solver of the order you need)"
        )
    return order


def multistep_order(i: int, n: int, order: int, lower_order_final: bool, final: bool) -> int:
    """Order of step ``i`` of ``n`` for a multistep method (diffusers' rule, for parity).

    Warm-up uses the history available (``i + 1`` evaluations); with ``lower_order_final`` and
    fewer than 15 steps the last ``order - 1`` steps drop order (stabler at very few steps); a
    step to sigma 0 (``final``) is first order since its log-SNR step is infinite.
    """
    o = min(order, i + 1)
    if lower_order_final and n < 15:
        o = min(o, n - i)
    return 1 if final else o


def f64(value: float, x: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient cast to ``x``'s dtype (coefficients are computed in float64)."""
    return torch.as_tensor(value, dtype=torch.float64).to(device=x.device, dtype=x.dtype)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def exp_adams_weights(
    nodes: Sequence[float], lam_s: float, lam_t: float, rate: float = 1.0
) -> np.ndarray:
    """``w_j = int_{lam_s}^{lam_t} rate * exp(-rate (lam_t - l)) L_j(l) dl`` (float64).

    ``L_j`` are the Lagrange basis polynomials on ``nodes`` (log-SNR values of past model
    outputs). These are the weights of exponential Adams methods in the data-prediction form
    (DPM-Solver++ / SA-Solver, Xue et al. 2023 eq. 13): ``x_t = e^{-rate h} ... + sum_j w_j D_j``.
    A 24-point Gauss-Legendre rule integrates ``exp * polynomial`` to machine precision for
    the step sizes used in sampling.
    """
    u = (lam_t - lam_s) / 2 * _GL_NODES + (lam_t + lam_s) / 2
    kernel = rate * np.exp(-rate * (lam_t - u)) * (lam_t - lam_s) / 2 * _GL_WEIGHTS
    nodes = np.asarray(nodes, dtype=np.float64)
    w = np.empty(len(nodes))
    for j in range(len(nodes)):
        basis = np.ones_like(u)
        for k in range(len(nodes)):
            if k != j:
                basis *= (u - nodes[k]) / (nodes[j] - nodes[k])
        w[j] = float((kernel * basis).sum())
    return w


def check_threshold(ratio: float, max_value: float = 1.0) -> float:
    """Validate a dynamic-thresholding ratio (0 = off)."""
    if ratio and (not 0 < ratio < 1 or max_value < 1):
        raise ConfigError(
            f"dynamic thresholding needs 0 < ratio < 1 and max_value >= 1, got {ratio}, "
            f"{max_value} (Imagen uses ratio 0.995)"
        )
    return ratio


def threshold(d: torch.Tensor, ratio: float, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding of the data prediction (Saharia et al. 2022, Imagen sec. 2.3).

    Per sample, ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` and ``x0 <- clamp(x0, -s, s)
    / s``. Returns ``d`` itself when ``ratio`` is 0 (off).
    """
    if not ratio:
        return d
    flat = d.reshape(d.shape[0], -1)
    s = torch.quantile(flat.abs().float(), ratio, dim=1).to(d.dtype).clamp(1, max_value)
    s = s.view(-1, *([1] * (d.ndim - 1)))
    return torch.clamp(d, -s, s) / s

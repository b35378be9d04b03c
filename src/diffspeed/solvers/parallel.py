"""Parallel sampling by Picard iteration (ParaDiGMS, Shih et al. 2023, Alg. 1).

All steps of a sliding window are evaluated in ONE batched network call per round and the
window's trajectory is refreshed by a cumulative sum of the Euler (DDIM) increments; steps
whose update changed less than the tolerance are accepted and the window slides past them.
Converged, the result equals sequential DDIM on the same schedule. It trades more total
evaluations (``info["nfe"]``, per sample) for fewer sequential rounds (``info["rounds"]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import report
from diffspeed.solvers.registry import register_solver


def _tile(value: Any, times: int) -> Any:
    """Repeat a batch-leading cond value ``times`` along the batch (dicts recursively)."""
    if isinstance(value, dict):
        return {k: _tile(v, times) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.repeat(times, *([1] * (value.ndim - 1)))
    return value


@register_solver("paradigms", "picard", order=1, stepwise=False)
def paradigms(
    denoiser: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    generator: Any = None,
    callback: Callable | None = None,
    info: dict | None = None,
    window: int = 8,
    tol: float = 1e-3,
    max_rounds: int | None = None,
) -> torch.Tensor:
    """Picard-iteration DDIM over a sliding window (ParaDiGMS).

    Args:
        window: steps evaluated in parallel per round (batch ``window * B`` per call).
        tol: accept step ``j`` when ``mean((x_j^new - x_j^old)^2) <= tol^2 * sigma_j^2`` for
            every sample (the error is measured relative to the noise level, as in the paper).
        max_rounds: cap on rounds (default: the number of steps, which always converges to
            the sequential result since each round fixes at least one more step exactly).
    """
    if not tol > 0:
        raise ConfigError(f"paradigms needs tol > 0, got {tol}")
    if not (isinstance(window, int) and window >= 1):
        raise ConfigError(f"paradigms needs an integer window >= 1, got {window!r}")
    cond, n, b = cond or {}, len(sigmas) - 1, x.shape[0]
    view = (-1,) + (1,) * (x.ndim - 1)
    traj = [x] + [x.clone() for _ in range(n)]  # current guess of x at every grid point
    start, rounds, evals = 0, 0, 0
    max_rounds = n if max_rounds is None else max_rounds
    while start < n and rounds < max_rounds:
        end = min(start + window, n)
        k = end - start
        xs = torch.cat(traj[start:end])
        sig = sigmas[start:end].to(x.device).repeat_interleave(b)  # [k * B] float64
        d = denoiser(xs, sig, **_tile(cond, k))  # one batched call for the whole window
        rounds, evals = rounds + 1, evals + k
        ratio = (sigmas[start + 1 : end + 1] / sigmas[start:end]).to(x.device, x.dtype)
        incr = ((ratio.repeat_interleave(b).view(view) - 1) * (xs - d)).view(k, b, *x.shape[1:])
        new = traj[start] + incr.cumsum(0)  # Picard update of x_{start+1..end}
        old = torch.stack(traj[start + 1 : end + 1])
        err = (new - old).pow(2).flatten(2).mean(2).max(1).values  # [k] worst sample
        thresh = (tol * sigmas[start + 1 : end + 1].to(x.device)) ** 2
        bad = (err > thresh.clamp_min(tol**2 * 1e-4)).nonzero()
        advance = k if len(bad) == 0 else max(1, int(bad[0]))
        for j in range(k):
            traj[start + 1 + j] = new[j]
        for j in range(end + 1, min(end + 1 + advance, n + 1)):  # init newly exposed points
            traj[j] = new[-1].clone()
        for j in range(advance):
            i = start + j
            report(callback, i, traj[i + 1], d[j * b : (j + 1) * b], sigmas[i], sigmas[i + 1])
        start += advance
    if info is not None:
        info.update({"nfe": evals, "rounds": rounds, "network_calls": rounds})
    return traj[n]

"""Step schedules optimized for the user's model, with no data: only calibration noises.

* ``ays``: Align-Your-Steps-style (Sabour et al. 2024). AYS minimises an upper bound on the
  discretisation error of the whole sampling run; here the bound is replaced by the quantity
  it bounds, measured directly: the squared distance between the solver's ``steps``-step
  output and a fine-step reference solve of the same model from the same calibration noises
  (and labels). Interior log-sigmas are refined by coordinate search with a halving step,
  starting from a base schedule (AYS's iterative refinement, sec. 3.3).
* ``dp``: dynamic-programming timestep selection (Watson et al. 2021): choose ``steps``
  transitions over a grid of the model's discrete timesteps minimising the sum of per-step
  local errors of a DDIM step started on the reference trajectory (decomposable, so the
  optimum is exact by DP, O(steps * G^2)). Solver-agnostic.

Both report the network evaluations they spent (``nfe``: batched calls on the calibration
batch).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.sampling import sample
from diffspeed.solvers.schedules import check_sigmas, get_sigmas

log = logging.getLogger("diffspeed")

#: Calibration noise seeds start here: disjoint from the reference set's seeds
#: (``ReferenceSpec.seed * 1_000_003 + i``).
CALIBRATION_SEED_BASE = 2_000_000_000


@dataclass
class TunedSchedule:
    """Result of :func:`tune_schedule`: the sigmas and what it cost."""

    sigmas: list[float]
    method: str
    solver: str
    steps: int
    nfe: int
    loss_before: float
    loss_after: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``{"sigmas": [...], ...}`` document ``sample(schedule="file.json")`` reads."""
        return {
            "sigmas": self.sigmas,
            "method": self.method,
            "solver": self.solver,
            "steps": self.steps,
            "nfe_cost": self.nfe,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            **self.extra,
        }


def _reference(den, noise, cond, steps):
    return sample(den, noise, "heun", steps, "karras", cond=cond)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean())


def tune_schedule(
    denoiser: Any,
    noise: torch.Tensor,
    solver: str = "dpmpp_2m",
    steps: int = 6,
    *,
    cond: dict | None = None,
    method: str = "ays",
    base: str | torch.Tensor = "karras",
    reference_steps: int = 100,
    rounds: int = 4,
    grid: int = 100,
    solver_options: dict | None = None,
    free_start: bool = True,
) -> TunedSchedule:
    """Optimise a ``steps``-step schedule for ``solver`` on ``denoiser`` (see module doc).

    Args:
        noise: calibration unit noises ``[N, ...]`` (use seeds disjoint from any evaluation
            set, e.g. from :data:`CALIBRATION_SEED_BASE`).
        cond: conditioning for the calibration batch (e.g. cycling class labels).
        method: ``"ays"`` or ``"dp"``.
        base: starting schedule of ``ays`` and the "before" baseline of both (a name or
            sigmas).
        reference_steps: Heun steps of the fine reference solve.
        rounds: coordinate-search rounds (``ays``).
        grid: candidate timesteps (``dp``), spread over the discrete timesteps.
        free_start: ``ays`` may also lower the first sigma below ``sigma_max`` (the noise is
            then scaled to it, as diffusers' "leading" spacing does); the reference solve
            always starts at ``sigma_max``, so the start only moves where that lowers the
            error against it.
    """
    if method not in ("ays", "dp"):
        raise ConfigError(f"method must be 'ays' or 'dp', got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    cond, opts = cond or {}, dict(solver_options or {})
    nfe0 = denoiser.nfe
    start = get_sigmas(denoiser, base, steps)

    def loss(sig: torch.Tensor, ref: torch.Tensor) -> float:
        return _mse(sample(denoiser, noise, solver, schedule=sig, cond=cond, **opts), ref)

    with torch.inference_mode():
        ref = _reference(denoiser, noise, cond, reference_steps)
        before = loss(start, ref)
        if method == "ays":
            best, extra = _coordinate_search(
                denoiser, start, lambda s: loss(s, ref), rounds, free_start
            )
        else:
            best, extra = _dp(denoiser, noise, cond, steps, grid, ref)
        after = loss(best, ref)
    nfe = denoiser.nfe - nfe0
    log.info("tune-schedule %s: loss %.4g -> %.4g, %d NFE", method, before, after, nfe)
    return TunedSchedule(
        best.tolist(),
        method,
        solver,
        steps,
        nfe,
        before,
        after,
        {"base": base if isinstance(base, str) else "custom", **extra},
    )


def _coordinate_search(den, sig, loss_fn, rounds, free_start):
    """Move each log-sigma by +-delta while the loss drops; halve delta per round.

    The trailing 0 stays; the first sigma moves only with ``free_start`` (never above
    ``sigma_max``)."""
    logs = sig[:-1].log().clone()
    lo, hi = math.log(den.sigma_min), math.log(den.sigma_max)

    def build(ls: torch.Tensor) -> torch.Tensor:
        return torch.cat([ls.exp(), sig[-1:]])

    best = loss_fn(build(logs))
    delta, evals = 0.5, 0
    for _ in range(rounds):
        for i in range(0 if free_start else 1, len(logs)):
            for move in (-delta, delta):
                trial = logs.clone()
                trial[i] += move
                upper = logs[i - 1] - 1e-3 if i > 0 else hi
                lower = logs[i + 1] + 1e-3 if i + 1 < len(logs) else lo
                if not lower <= float(trial[i]) <= upper:
                    continue
                value = loss_fn(build(trial))
                evals += 1
                if value < best:
                    best, logs = value, trial
        delta /= 2
    return check_sigmas(den, build(logs)), {"trials": evals}


def _dp(den, noise, cond, steps, grid, ref):
    """Watson-style DP over candidate timesteps with DDIM local errors on the reference path."""
    cand, err = _dp_errors(den, noise, cond, grid)
    sig, cost = _dp_solve(cand, err, steps)
    return check_sigmas(den, sig), {"dp_cost": cost, "candidates": len(cand)}


def dp_schedules(
    denoiser: Any,
    noise: torch.Tensor,
    steps: list[int],
    *,
    cond: dict | None = None,
    grid: int = 100,
) -> tuple[dict[int, torch.Tensor], int]:
    """DP-optimal schedules for several step counts from ONE set of local errors.

    Returns ``({steps: sigmas}, nfe)``; the expensive part (reference trajectory and the
    evaluations on it) is shared, the DP per step count is free.
    """
    nfe0 = denoiser.nfe
    with torch.inference_mode():
        cand, err = _dp_errors(denoiser, noise, cond or {}, grid)
        out = {k: check_sigmas(denoiser, _dp_solve(cand, err, k)[0]) for k in steps}
    return out, denoiser.nfe - nfe0


def _dp_errors(den, noise, cond, grid):
    """Candidate sigmas and ``err[i, j]``: MSE of a DDIM step i -> j from the reference path
    (``j == G`` is the step to sigma 0)."""
    if not hasattr(den, "t_to_sigma") and not hasattr(getattr(den, "inner", None), "t_to_sigma"):
        raise ConfigError("the 'dp' method selects discrete timesteps; the model has none")
    vp = den if hasattr(den, "t_to_sigma") else den.inner
    T = vp.num_train_timesteps
    ts = torch.linspace(T - 1, 0, grid, dtype=torch.float64).round().unique().flip(0)
    cand = vp.t_to_sigma(ts)  # decreasing sigmas, cand[0] = sigma_max
    # reference trajectory through every candidate (Heun on the candidate grid, 2 substeps)
    fine = torch.cat([torch.stack([cand[:-1], (cand[:-1] * cand[1:]).sqrt()], 1).flatten(),
                      cand[-1:], torch.zeros(1, dtype=torch.float64)])  # fmt: skip
    traj: list[torch.Tensor] = []
    x0 = sample(den, noise, "heun", schedule=fine, cond=cond,
                callback=lambda st: traj.append(st["x"]))  # fmt: skip
    path = [noise.double() * den.noise_scale(float(cand[0]))] + traj[1::2][: len(cand) - 1]
    g = len(cand)
    d = [
        den(path[i].to(noise.dtype), cand[i].expand(len(noise)), **cond).double() for i in range(g)
    ]
    err = torch.full((g, g + 1), math.inf, dtype=torch.float64)
    for i in range(g):
        for j in range(i + 1, g):
            step = d[i] + float(cand[j] / cand[i]) * (path[i] - d[i])
            err[i, j] = _mse(step, path[j])
        err[i, g] = _mse(d[i], x0)
    return cand, err


def _dp_solve(cand, err, steps):
    """Min-cost path with exactly ``steps`` transitions from candidate 0 to sigma 0."""
    g = len(cand)
    cost = torch.full((steps + 1, g + 1), math.inf, dtype=torch.float64)
    back = torch.zeros((steps + 1, g + 1), dtype=torch.long)
    cost[0, 0] = 0
    for k in range(1, steps + 1):
        total = cost[k - 1, :g, None] + err  # [g, g+1]: from node i to node j
        cost[k], back[k] = total.min(0)
    nodes, j = [], g
    for k in range(steps, 0, -1):
        j = int(back[k, j])
        nodes.append(j)
    sig = torch.cat([cand[list(reversed(nodes))], torch.zeros(1, dtype=torch.float64)])
    return sig, float(cost[steps, g])

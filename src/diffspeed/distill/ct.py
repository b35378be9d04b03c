"""Consistency training without a teacher (Song et al. 2023, Alg. 3; improved CT, Song &
Dhariwal 2023).

The ODE step of consistency distillation is replaced by the one-sample estimate of the
trajectory: the same noise ``z`` at both levels, ``x_{n+1} = x0 + sigma_{n+1} z`` and
``x_n = x0 + sigma_n z``. Improved CT's choices are the defaults: the pseudo-Huber metric,
weighting ``1 / (sigma_{n+1} - sigma_n)``, a lognormal distribution over the discretisation
index, no EMA on the target (``target_decay = 0``: the stop-gradient student), and the
doubling curriculum of the number of points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffspeed.distill.consistency import (
    METRICS,
    Boundary,
    curriculum,
    distance,
    group_index,
    karras_grid,
)
from diffspeed.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class CT:
    """Consistency-training settings (defaults: improved CT, shortened for small budgets).

    Attributes:
        n_start, n_end: discretisation points at the start / end of the doubling curriculum
            (iCT: 11 -> 1281 over 400k steps).
        rho: Karras spacing exponent.
        sigma_max: top of the discretisation (None: the model's ``sigma_max``).
        p_mean, p_std: the lognormal over sigma that weights the index draw (iCT eq. 6).
        metric, huber_c: the distance (pseudo-Huber; c = 0.00054 sqrt(d) when None).
        weighting: ``"inverse_gap"`` (``1 / (sigma_{n+1} - sigma_n)``, iCT) or ``"uniform"``.
        target_decay: EMA decay of the target network (0: the stop-gradient student, iCT).
        sigma_data, boundary_scale: the consistency parameterisation (:class:`Boundary`).
    """

    n_start: int = 11
    n_end: int = 81
    rho: float = 7.0
    sigma_max: float | None = None
    p_mean: float = -1.1
    p_std: float = 2.0
    metric: str = "pseudo_huber"
    huber_c: float | None = None
    weighting: str = "inverse_gap"
    target_decay: float = 0.0
    sigma_data: float = 0.5
    boundary_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise unknown_name("consistency metric", self.metric, METRICS)
        if self.weighting not in ("inverse_gap", "uniform"):
            raise unknown_name("CT weighting", self.weighting, ("inverse_gap", "uniform"))
        if not 2 <= self.n_start <= self.n_end or self.p_std <= 0:
            raise ConfigError("CT needs 2 <= n_start <= n_end and p_std > 0")
        if not 0 <= self.target_decay < 1:
            raise ConfigError(f"target_decay must be in [0, 1), got {self.target_decay}")

    @property
    def boundary(self) -> Boundary:
        """The consistency parameterisation the student is built with."""
        return Boundary(self.sigma_data, self.boundary_scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def lognormal_index_probs(grid: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """iCT eq. 6: ``p(n) ∝ erf((log s_{n+1} - P_mean) / (sqrt2 P_std)) - erf((log s_n - ...))``."""
    e = torch.erf((grid.log() - p_mean) / (2**0.5 * p_std))
    return (e[1:] - e[:-1]).clamp_min(1e-12)


class CTLoss:
    """The CT loss ``loss(student, teacher, x0, cond, ctx) -> [B]``; ``teacher`` is unused."""

    def __init__(self, config: CT = CT()) -> None:
        self.config = config
        self.emas = {"target": config.target_decay}

    def __call__(self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        c = self.config
        n = curriculum(ctx.step, ctx.total_steps, c.n_start, c.n_end)
        grid = karras_grid(student, n, c.rho, c.sigma_max).to(x0.device)
        probs = lognormal_index_probs(grid, c.p_mean, c.p_std)
        idx = group_index(ctx, n - 1, ctx.global_batch, probs.cpu())  # one index per sample
        s_hi, s_lo = grid[idx + 1], grid[idx]
        view = (-1,) + (1,) * (x0.ndim - 1)
        z = ctx.randn(*x0.shape[1:])
        # the same noise at both levels: a one-sample estimate of the ODE step
        x_hi = x0 + s_hi.view(view).to(x0.dtype) * z
        x_lo = x0 + s_lo.view(view).to(x0.dtype) * z
        target = ctx.emas["target"](x_lo, s_lo, **cond).detach()
        d = distance(student(x_hi, s_hi, **cond), target, c.metric, c.huber_c)
        weight = 1 / (s_hi - s_lo) if c.weighting == "inverse_gap" else torch.ones_like(s_hi)
        return d * weight.to(d.dtype)

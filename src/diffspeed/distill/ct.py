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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.distill.cd import CONSISTENCY_TRAIN, check_consistency
from diffspeed.distill.consistency import (
    Boundary,
    consistency_recipe,
    consistency_student,
    curriculum,
    distance,
    group_index,
    karras_grid,
    top_sigma,
    train_consistency,
)
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.errors import ConfigError, unknown_name


@register("ct")
@dataclass(frozen=True)
class CT(MethodConfig):
    """Consistency training, no teacher (defaults: improved CT, shortened for small budgets).

    The student starts from the teacher's weights (as in ECT, Geng et al. 2024) and trains on
    data only.

    Attributes:
        n_start, n_end: discretisation points at the start / end of the doubling curriculum
            (iCT: 11 -> 1281 over 400k steps).
        rho: Karras spacing exponent.
        strength: top of the trained noise range, as the ``lcm`` schedule's ``strength``.
        p_mean, p_std: the lognormal over sigma that weights the index draw (iCT eq. 6).
        metric: the distance (pseudo-Huber, c = 0.00054 sqrt(d); or ``"l2"``).
        weighting: ``"inverse_gap"`` (``1 / (sigma_{n+1} - sigma_n)``, iCT) or ``"uniform"``.
        target_decay: EMA decay of the target network (0: the stop-gradient student, iCT).
        parameterization: what the student network predicts (``"eps"``, ``"v"``, ``"x0"``).
    """

    n_start: int = 11
    n_end: int = 81
    rho: float = 7.0
    strength: float = 0.6
    p_mean: float = -1.1
    p_std: float = 2.0
    metric: str = "pseudo_huber"
    weighting: str = "inverse_gap"
    target_decay: float = 0.0
    parameterization: str = "eps"

    bench_row: ClassVar[str] = "consistency"
    train_defaults: ClassVar[dict[str, Any]] = CONSISTENCY_TRAIN

    def __post_init__(self) -> None:
        check_consistency(self)
        if self.weighting not in ("inverse_gap", "uniform"):
            raise unknown_name("CT weighting", self.weighting, ("inverse_gap", "uniform"))
        if not 2 <= self.n_start <= self.n_end or self.p_std <= 0:
            raise ConfigError("CT needs 2 <= n_start <= n_end and p_std > 0")

    @property
    def boundary(self) -> Boundary:
        """The consistency parameterisation the student is built with."""
        return Boundary()

    def run(self, teacher: Any, train: list[Any], out: Path, data: Any, opts: RunOptions) -> Path:
        """A consistency student from the teacher's weights, trained with :class:`CTLoss`."""
        student = consistency_student(
            teacher, self.boundary, parameterization=self.parameterization, strength=self.strength
        )
        recipe = consistency_recipe(student)
        info = {"init": "teacher weights"}
        return train_consistency(
            student,
            CTLoss(self),
            None,
            train[0],
            out,
            data=data,
            recipe=recipe,
            opts=opts,
            info=info,
        )


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
        grid = karras_grid(student, n, c.rho, top_sigma(student, c.strength)).to(x0.device)
        probs = lognormal_index_probs(grid, c.p_mean, c.p_std)
        idx = group_index(ctx, n - 1, ctx.global_batch, probs.cpu())  # one index per sample
        s_hi, s_lo = grid[idx + 1], grid[idx]
        view = (-1,) + (1,) * (x0.ndim - 1)
        z = ctx.randn(*x0.shape[1:])
        # the same noise at both levels: a one-sample estimate of the ODE step
        x_hi = x0 + s_hi.view(view).to(x0.dtype) * z
        x_lo = x0 + s_lo.view(view).to(x0.dtype) * z
        target = ctx.emas["target"](x_lo, s_lo, **cond).detach()
        d = distance(student(x_hi, s_hi, **cond), target, c.metric)
        weight = 1 / (s_hi - s_lo) if c.weighting == "inverse_gap" else torch.ones_like(s_hi)
        return d * weight.to(d.dtype)

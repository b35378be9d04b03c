"""Consistency distillation (Song et al. 2023, Algorithm 2).

For a random pair of adjacent points ``sigma_n < sigma_{n+1}`` of a discretisation of
``[sigma_min, sigma_max]``: noise the data to ``x_{n+1} = x0 + sigma_{n+1} z``, take ONE step of
a teacher ODE solver (any registered diffspeed solver: DDIM, Heun, DPM-Solver++) to
``x_n``, and pull the student's ``f(x_{n+1}, sigma_{n+1})`` towards the EMA target network's
``f(x_n, sigma_n)`` under L2 or pseudo-Huber. The number of points may grow during training
(the improved-CT curriculum).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.distill.consistency import (
    METRICS,
    Boundary,
    consistency_recipe,
    consistency_student,
    curriculum,
    distance,
    group_index,
    karras_grid,
    teacher_step,
    top_sigma,
    train_consistency,
)
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.distill.students import PARAMETERIZATIONS
from diffspeed.errors import ConfigError, unknown_name

#: TrainConfig values the command line of the consistency methods starts from.
CONSISTENCY_TRAIN: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 32,
    "warmup": 20,
    "ema_decay": 0.99,
    "checkpoint_every": 100,
}


@register("cd")
@dataclass(frozen=True)
class CD(MethodConfig):
    """Consistency distillation (Song et al. 2023, Algorithm 2).

    Attributes:
        solver: the teacher's one-step ODE solver (a registered name: ``"ddim"``, ``"heun"``,
            ``"dpmpp_2m"`` ...).
        guidance: classifier-free guidance scale of the teacher ODE (1 = unguided).
        n_start, n_end: discretisation points at the start / end of the curriculum (equal:
            fixed ``N``, Song et al. use 18 on CIFAR-10).
        rho: Karras spacing exponent of the discretisation.
        strength: top of the trained noise range, as the ``lcm`` schedule's ``strength``
            (1: up to the model's ``sigma_max``).
        metric: ``"l2"`` or ``"pseudo_huber"`` (c = 0.00054 sqrt(d)).
        target_decay: EMA decay ``mu`` of the target network (0.95 in Song et al. for CD).
        groups: distinct discretisation indices per batch (the teacher solver runs once per
            group; more groups = less gradient variance, more teacher calls).
        parameterization: what the student network predicts (``"eps"``, ``"v"``, ``"x0"``).
    """

    solver: str = "heun"
    guidance: float = 1.25
    n_start: int = 18
    n_end: int = 18
    rho: float = 7.0
    strength: float = 0.6
    metric: str = "pseudo_huber"
    target_decay: float = 0.95
    groups: int = 2
    parameterization: str = "eps"

    bench_row: ClassVar[str] = "consistency"
    train_defaults: ClassVar[dict[str, Any]] = CONSISTENCY_TRAIN

    def __post_init__(self) -> None:
        from diffspeed.solvers.registry import SOLVERS

        SOLVERS[self.solver]  # noqa: B018 - raises a ConfigError naming the solvers
        check_consistency(self)
        if not (2 <= self.n_start <= self.n_end) or self.groups < 1 or self.guidance < 0:
            raise ConfigError("CD needs 2 <= n_start <= n_end, groups >= 1, guidance >= 0")

    @property
    def boundary(self) -> Boundary:
        """The consistency parameterisation the student is built with."""
        return Boundary()

    def run(self, teacher: Any, train: list[Any], out: Path, data: Any, opts: RunOptions) -> Path:
        """A consistency student from the teacher's weights, trained with :class:`CDLoss`."""
        student = consistency_student(
            teacher, self.boundary, parameterization=self.parameterization, strength=self.strength
        )
        recipe = consistency_recipe(student, guidance=self.guidance)
        return train_consistency(
            student, CDLoss(self), teacher, train[0], out, data=data, recipe=recipe, opts=opts
        )


def check_consistency(config: Any) -> None:
    """Refuse the settings every consistency method shares when they are out of range."""
    if config.metric not in METRICS:
        raise unknown_name("consistency metric", config.metric, METRICS)
    if config.parameterization not in PARAMETERIZATIONS:
        raise unknown_name("parameterization", config.parameterization, PARAMETERIZATIONS)
    if not 0 < config.strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got {config.strength}")
    if not 0 <= config.target_decay < 1:
        raise ConfigError(f"target_decay must be in [0, 1), got {config.target_decay}")


class CDLoss:
    """The CD loss ``loss(student, teacher, x0, cond, ctx) -> [B]`` for ``distill.train``.

    ``student`` is a :class:`~diffspeed.distill.consistency.ConsistencyDenoiser`; the EMA
    target network is the trainer's ``"target"`` EMA (decay ``config.target_decay``).
    """

    def __init__(self, config: CD = CD()) -> None:
        self.config = config
        self.emas = {"target": config.target_decay}

    def __call__(self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        c = self.config
        n = curriculum(ctx.step, ctx.total_steps, c.n_start, c.n_end)
        grid = karras_grid(student, n, c.rho, top_sigma(student, c.strength)).to(x0.device)
        idx = group_index(ctx, n - 1, c.groups)  # pair (sigma_{n+1} -> sigma_n)
        s_hi, s_lo = grid[idx + 1], grid[idx]
        view = (-1,) + (1,) * (x0.ndim - 1)
        # noise the data to sigma_{n+1}
        x_hi = x0 + s_hi.view(view).to(x0.dtype) * ctx.randn(*x0.shape[1:])
        # one teacher ODE step to sigma_n (CFG-augmented unless guidance is 1)
        guided = c.guidance if c.guidance != 1 else None
        x_lo = teacher_step(teacher, x_hi, s_hi, s_lo, solver=c.solver, cond=cond, guidance=guided)
        # the EMA target network at sigma_n, the online student at sigma_{n+1}
        target = ctx.emas["target"](x_lo.detach(), s_lo, **cond).detach()
        return distance(student(x_hi, s_hi, **cond), target, c.metric)

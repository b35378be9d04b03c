"""Latent consistency distillation (LCM, Luo et al. 2023, Algorithm 1), in pixel space here.

Consistency distillation on the teacher's discrete timesteps with a *skipping step*: the pairs
are ``t_{n+k} -> t_n`` on the grid ``0, k-1, 2k-1, ..., T-1`` (k = 20: the 50-step DDIM
grid the LCM scheduler samples from), the teacher ODE is the classifier-free-guided one,
``D_w = D(x|u) + w (D(x|c) - D(x|u))`` (``u`` the teacher's unconditional input) with ``w``
drawn per sample from ``w_range``, and the student takes ``w`` as an input (the
guidance-scale embedding of :class:`~diffspeed.distill.wcond.WCondUNet`), so one forward
gives the guided output at any trained scale. With a LoRA student (``diffspeed.distill.lora``)
and a fixed ``w`` this is LCM-LoRA.
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
    distance,
    group_index,
    teacher_step,
    timestep_grid,
    train_consistency,
)
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.distill.students import SCALE_KEY
from diffspeed.distill.trajectories import Trajectories
from diffspeed.errors import ConfigError

#: Cached teacher trajectories of the anchor term, and DPM-Solver++(2M) steps per grid interval.
ANCHOR_PAIRS = 4000
ANCHOR_SUBSTEPS = 2


@register("lcm")
@dataclass(frozen=True)
class LCM(MethodConfig):
    """Latent consistency distillation (Luo et al. 2023) with a guidance-scale embedding.

    Attributes:
        k: the skipping step in training timesteps (grid ``0, k-1, 2k-1, ..., T-1``).
        strength: top of the grid as a fraction of it (1: up to ``T - 1``); sample with the
            ``lcm`` schedule's same ``strength``.
        solver: the teacher's one-step ODE solver between grid points (a registered name).
        w_range: guidance-scale range the teacher ODE is drawn from, uniformly per sample
            (diffspeed scale: 1 = conditional; LCM's ``omega`` is ``w - 1``). A range makes
            the student take ``guidance_scale`` in its cond (a WCondUNet); a single scale
            (``low == high``) distils that scale without an embedding.
        guidance: the scale a w-conditioned student samples at by default.
        metric: the distance (pseudo-Huber, c = 0.00054 sqrt(d); or ``"l2"``).
        target_decay: EMA decay of the target network (LCM: 0.95).
        groups: distinct grid indices per batch (one teacher solver call each).
        parameterization: what the student network predicts (``"eps"``, ``"v"``, ``"x0"``).
        anchor: weight of the trajectory term (0: the plain LCM loss). With ``anchor > 0`` the
            loss also maps states of cached teacher ODE trajectories
            (:mod:`~diffspeed.distill.trajectories`) to their ends, so the chain of
            bootstrapped hops is tied to the ODE's real endpoints.
        anchor_top: the fraction of trajectory rows taken at the grid's top (the one-step
            sampler's only point); the rest are uniform over the other grid points.
        init: start from this student's network and parameterisation (a path or shipped
            name, e.g. a w-conditioned v student of guided distillation) instead of the
            teacher's.
    """

    k: int = 20
    strength: float = 0.6
    solver: str = "ddim"
    w_range: tuple[float, float] = (1.0, 2.0)
    guidance: float = 1.25
    metric: str = "pseudo_huber"
    target_decay: float = 0.95
    groups: int = 2
    parameterization: str = "eps"
    anchor: float = 0.0
    anchor_top: float = 0.5
    init: str | None = None

    bench_row: ClassVar[str] = "consistency"
    train_defaults: ClassVar[dict[str, Any]] = CONSISTENCY_TRAIN

    def __post_init__(self) -> None:
        from diffspeed.solvers.registry import SOLVERS

        SOLVERS[self.solver]  # noqa: B018 - raises a ConfigError naming the solvers
        check_consistency(self)
        lo, hi = self.w_range
        if not 0 <= lo <= hi:
            raise ConfigError(f"need 0 <= w_range[0] <= w_range[1], got {self.w_range}")
        if self.k < 1 or self.groups < 1:
            raise ConfigError("LCM needs k >= 1 and groups >= 1")
        if self.anchor < 0 or not 0 <= self.anchor_top <= 1:
            raise ConfigError(
                f"LCM needs anchor >= 0 and anchor_top in [0, 1], got {self.anchor}, "
                f"{self.anchor_top}"
            )

    @property
    def w_embedding(self) -> bool:
        """Whether the student takes the guidance scale (a range of scales is distilled)."""
        return self.w_range[0] < self.w_range[1]

    @property
    def boundary(self) -> Boundary:
        """The consistency parameterisation the student is built with."""
        return Boundary()

    def run(self, teacher: Any, train: list[Any], out: Path, data: Any, opts: RunOptions) -> Path:
        """A (w-conditioned) consistency student trained with :class:`LCMLoss`."""
        init = None
        if self.init:
            from diffspeed.distill.students import load_student

            init, _ = load_student(self.init)
        student = consistency_student(
            teacher,
            self.boundary,
            parameterization=self.parameterization,
            w_conditioned=self.w_embedding,
            strength=self.strength,
            init=init,
        )
        if self.w_embedding:
            recipe = consistency_recipe(student, guidance=self.guidance, w_range=self.w_range)
        else:  # the one distilled scale is baked in
            recipe = consistency_recipe(student, guidance=self.w_range[0])
        loss = lcm_loss(self, teacher, out, opts.progress)
        info = {"init": str(self.init)} if self.init else None
        return train_consistency(
            student, loss, teacher, train[0], out, data=data, recipe=recipe, opts=opts, info=info
        )


def lcm_loss(config: Any, teacher: Any, out: Path, progress: bool = False) -> LCMLoss:
    """The LCM loss, with teacher trajectories (cached in ``out``) when ``anchor > 0``."""
    if config.anchor == 0:
        return LCMLoss(config)
    from diffspeed.distill.trajectories import teacher_trajectories

    out.mkdir(parents=True, exist_ok=True)
    trajectories = teacher_trajectories(
        teacher,
        timestep_grid(teacher, config.k, config.strength),
        num=ANCHOR_PAIRS,
        w_range=config.w_range,
        substeps=ANCHOR_SUBSTEPS,
        cache=out / "trajectories.safetensors",
        progress=progress,
    )
    return LCMLoss(config, trajectories)


class LCMLoss:
    """The LCM loss ``loss(student, teacher, x0, cond, ctx) -> [B]`` for ``distill.train``.

    ``teacher`` is the unguided conditional denoiser (guidance is applied here per sample);
    ``student`` a :class:`~diffspeed.distill.consistency.ConsistencyDenoiser` whose network
    takes ``guidance_scale`` when ``config.w_embedding``. ``trajectories`` (required when
    ``config.anchor > 0``) are teacher ODE trajectories on the student's grid
    (:func:`~diffspeed.distill.trajectories.teacher_trajectories`).
    """

    def __init__(self, config: Any = LCM(), trajectories: Trajectories | None = None) -> None:
        if config.anchor > 0 and trajectories is None:
            raise ConfigError(
                "LCM anchor > 0 needs teacher trajectories "
                "(diffspeed.distill.trajectories.teacher_trajectories)"
            )
        self.config = config
        self.trajectories = trajectories if config.anchor > 0 else None
        self.emas = {"target": config.target_decay}

    def __call__(self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        c = self.config
        grid = timestep_grid(student, c.k, c.strength).to(x0.device)
        idx = group_index(ctx, len(grid) - 1, c.groups)  # pair (t_{n+k} -> t_n)
        s_hi, s_lo = grid[idx + 1], grid[idx]
        view = (-1,) + (1,) * (x0.ndim - 1)
        # noise the data to t_{n+k}; draw the guidance scale per sample
        x_hi = x0 + s_hi.view(view).to(x0.dtype) * ctx.randn(*x0.shape[1:])
        lo, hi = c.w_range
        w = lo + (hi - lo) * ctx.rand().double()
        # one step of the CFG-augmented teacher ODE to t_n (w = 1: the conditional ODE)
        guided = None if lo == hi == 1.0 else w
        x_lo = teacher_step(teacher, x_hi, s_hi, s_lo, solver=c.solver, cond=cond, guidance=guided)
        # the student and the EMA target, both conditioned on w
        scond = {**cond, SCALE_KEY: w.float()} if c.w_embedding else cond
        target = ctx.emas["target"](x_lo.detach(), s_lo, **scond).detach()
        loss = distance(student(x_hi, s_hi, **scond), target, c.metric)
        if self.trajectories is not None:
            loss = loss + c.anchor * self._anchor(student, grid, ctx)
        return loss

    def _anchor(self, student: Any, grid: torch.Tensor, ctx: Any) -> torch.Tensor:
        """``[B]`` distances between ``f`` at trajectory states and the trajectories' ends."""
        c = self.config
        tr = self.trajectories
        if tr.sigmas.shape != grid.shape or not torch.allclose(tr.sigmas.to(grid), grid):
            raise ConfigError(
                "the anchor trajectories were sampled on another grid than the LCM's "
                f"(k={c.k}, strength={c.strength}); recompute them for this grid"
            )
        if tr.states.device != grid.device:
            tr = self.trajectories = tr.to(grid.device)
        top = len(grid) - 1
        rows = ctx.randint(0, len(tr))  # ctx draws land on the batch's device, as grid does
        idx = torch.where(ctx.rand() < c.anchor_top, top, ctx.randint(1, top))
        acond: dict[str, Any] = {k: v[rows] for k, v in tr.cond.items()}
        if c.w_embedding:
            acond[SCALE_KEY] = tr.guidance[rows].float()
        out = student(tr.states[rows, idx], grid[idx], **acond)
        return distance(out, tr.endpoints[rows], c.metric)

"""Latent consistency distillation (LCM, Luo et al. 2023, Algorithm 1), in pixel space here.

Consistency distillation on the teacher's discrete timesteps with a *skipping step*: the pairs
are ``t_{n+k} -> t_n`` on the grid ``0, k-1, 2k-1, ..., T-1`` (k = 20: the 50-step DDIM
grid the LCM scheduler samples from), the teacher ODE is the classifier-free-guided one,
``D_w = D(x|null) + w (D(x|y) - D(x|null))`` with ``w`` drawn per sample from
``[w_min, w_max]``, and the student takes ``w`` as an input (the guidance-scale embedding
of :class:`~diffspeed.distill.wcond.WCondUNet`), so one forward gives the guided output at
any trained scale. With a LoRA student (``diffspeed.distill.lora``) and a fixed ``w`` this
is LCM-LoRA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffspeed.distill.consistency import (
    METRICS,
    Boundary,
    distance,
    group_index,
    teacher_step,
    timestep_grid,
)
from diffspeed.distill.trajectories import Trajectories
from diffspeed.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class LCM:
    """LCM settings.

    Attributes:
        k: the skipping step in training timesteps (grid ``0, k-1, 2k-1, ..., T-1``).
        strength: top of the grid as a fraction of it (1: up to ``T - 1``); sample with the
            ``lcm`` schedule's same ``strength``.
        solver: the teacher's one-step ODE solver between grid points (a registered name).
        w_min, w_max: guidance-scale range the teacher ODE is drawn from, uniformly per sample
            (diffspeed scale: 1 = conditional; LCM's ``omega`` is ``w - 1``).
        w_embedding: the student takes ``guidance_scale`` in its cond (a WCondUNet); without
            it (LCM-LoRA) use ``w_min == w_max``.
        metric, huber_c: the distance (pseudo-Huber; c = 0.00054 sqrt(d) when None).
        target_decay: EMA decay of the target network (LCM: 0.95).
        groups: distinct grid indices per batch (one teacher solver call each).
        sigma_data, boundary_scale: the consistency parameterisation (:class:`Boundary`).
        anchor: weight of the trajectory term (0: the plain LCM loss). With ``anchor > 0`` the
            loss also maps states of cached teacher ODE trajectories
            (:mod:`~diffspeed.distill.trajectories`) to their ends, so the chain of
            bootstrapped hops is tied to the ODE's real endpoints.
        anchor_top: the fraction of trajectory rows taken at the grid's top (the one-step
            sampler's only point); the rest are uniform over the other grid points.
        anchor_pairs, anchor_substeps: number of cached trajectories and DPM-Solver++(2M)
            steps per grid interval that computed them.
    """

    k: int = 20
    strength: float = 1.0
    solver: str = "ddim"
    w_min: float = 1.0
    w_max: float = 2.0
    w_embedding: bool = True
    metric: str = "pseudo_huber"
    huber_c: float | None = None
    target_decay: float = 0.95
    groups: int = 4
    sigma_data: float = 0.5
    boundary_scale: float = 100.0
    anchor: float = 0.0
    anchor_top: float = 0.5
    anchor_pairs: int = 4000
    anchor_substeps: int = 2

    def __post_init__(self) -> None:
        from diffspeed.solvers.registry import SOLVERS

        SOLVERS[self.solver]  # noqa: B018 - raises a ConfigError naming the solvers
        if self.metric not in METRICS:
            raise unknown_name("consistency metric", self.metric, METRICS)
        if not 0 <= self.w_min <= self.w_max:
            raise ConfigError(f"need 0 <= w_min <= w_max, got {self.w_min}, {self.w_max}")
        if not self.w_embedding and self.w_min != self.w_max:
            raise ConfigError(
                "without a guidance embedding the student cannot tell scales apart; "
                "set w_min == w_max (LCM-LoRA distils one scale)"
            )
        if self.k < 1 or self.groups < 1 or not 0 <= self.target_decay < 1:
            raise ConfigError("LCM needs k >= 1, groups >= 1 and target_decay in [0, 1)")
        if self.anchor < 0 or not 0 <= self.anchor_top <= 1 or self.anchor_pairs < 1:
            raise ConfigError(
                "LCM needs anchor >= 0, anchor_top in [0, 1] and anchor_pairs >= 1, got "
                f"{self.anchor}, {self.anchor_top}, {self.anchor_pairs}"
            )

    @property
    def boundary(self) -> Boundary:
        """The consistency parameterisation the student is built with."""
        return Boundary(self.sigma_data, self.boundary_scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class LCMLoss:
    """The LCM loss ``loss(student, teacher, x0, cond, ctx) -> [B]`` for ``distill.train``.

    ``teacher`` is the unguided conditional denoiser (guidance is applied here per sample);
    ``student`` a :class:`~diffspeed.distill.consistency.ConsistencyDenoiser` whose network
    takes ``guidance_scale`` when ``config.w_embedding``. ``trajectories`` (required when
    ``config.anchor > 0``) are teacher ODE trajectories on the student's grid
    (:func:`~diffspeed.distill.trajectories.teacher_trajectories`).
    """

    def __init__(self, config: LCM = LCM(), trajectories: Trajectories | None = None) -> None:
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
        w = c.w_min + (c.w_max - c.w_min) * ctx.rand().double()
        # one step of the CFG-augmented teacher ODE to t_n (w = 1: the conditional ODE)
        guided = None if c.w_min == c.w_max == 1.0 else w
        x_lo = teacher_step(teacher, x_hi, s_hi, s_lo, solver=c.solver, cond=cond, guidance=guided)
        # the student and the EMA target, both conditioned on w
        scond = {**cond, "guidance_scale": w.float()} if c.w_embedding else cond
        target = ctx.emas["target"](x_lo.detach(), s_lo, **scond).detach()
        loss = distance(student(x_hi, s_hi, **scond), target, c.metric, c.huber_c)
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
            acond["guidance_scale"] = tr.guidance[rows].float()
        out = student(tr.states[rows, idx], grid[idx], **acond)
        return distance(out, tr.endpoints[rows], c.metric, c.huber_c)

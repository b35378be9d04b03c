"""Guided distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models").

Stage 1 folds classifier-free guidance into one guidance-scale-conditioned student
(:class:`~diffspeed.distill.wcond.WCondUNet`): for random ``x_t``, labels and ``w ~ U(w_range)``
the student's single forward ``D_s(x, sigma, y, w)`` regresses the guided teacher's
``D_u + w (D_c - D_u)`` (their eq. 6; two teacher forwards, batched). Stage 2 runs progressive
distillation (:mod:`~diffspeed.distill.progressive`) on the w-conditioned student, drawing a
fresh ``w`` per sample, so every student samples at any ``w`` in the range with one forward
per step - half the cost per step of the guided teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.core.contract import network_of
from diffspeed.core.guidance import guidance
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.distill.progressive import (
    STEP_TRAIN,
    WEIGHTINGS,
    Progressive,
    progressive_rounds,
    teacher_grid,
)
from diffspeed.distill.students import (
    Recipe,
    check_finished,
    load_student,
    make_student,
    save_student,
)
from diffspeed.distill.trainer import LossContext, TrainConfig, TrainData, train
from diffspeed.errors import ConfigError
from diffspeed.models.io import weights_digest


@register("guided")
@dataclass(frozen=True)
class Guided(MethodConfig):
    """Guided distillation (Meng et al. 2023): fold guidance into a w-conditioned student,
    then progressive rounds. Train configs: stage 1, then one per round.

    Attributes:
        w_range: guidance scales the student is trained for (``w`` drawn uniformly).
        guidance: the scale a student samples at by default (inside ``w_range``).
        parameterization: what the stage-2 students predict (``"v"``: stable at few steps).
        stage1_parameterization: what the stage-1 student predicts. ``"eps"`` (the teacher's
            own parameterisation) starts it exactly at the conditional teacher, so stage 1
            only learns the guidance; a different one must first re-learn the output.
        stage1_weighting: weighting of the stage-1 regression over a uniform timestep
            (a :data:`~diffspeed.distill.progressive.WEIGHTINGS` name that depends on sigma
            only; ``"snr"``: the x0 error in eps units, the teacher's own training loss).
        teacher_steps, final_steps, schedule, weighting, teacher_substeps: stage 2 (see
            :class:`~diffspeed.distill.progressive.Progressive`).
    """

    w_range: tuple[float, float] = (1.0, 4.0)
    guidance: float = 2.0
    parameterization: str = "v"
    stage1_parameterization: str = "eps"
    stage1_weighting: str = "snr"
    teacher_steps: int = 16
    final_steps: int = 1
    schedule: str = "trailing"
    weighting: str = "next_snr"
    teacher_substeps: int = 1

    train_defaults: ClassVar[dict[str, Any]] = STEP_TRAIN

    def __post_init__(self) -> None:
        lo, hi = self.w_range
        if not 0 <= lo <= self.guidance <= hi:
            raise ConfigError(f"need 0 <= w_range[0] <= guidance <= w_range[1], got {self}")
        if self.stage1_weighting not in WEIGHTINGS or self.stage1_weighting == "next_snr":
            raise ConfigError(
                f"stage1_weighting {self.stage1_weighting!r} must be one of "
                f"{', '.join(k for k in WEIGHTINGS if k != 'next_snr')}"
            )
        self.progressive()  # validates the stage-2 settings

    def progressive(self) -> Progressive:
        """The stage-2 progressive-distillation settings."""
        return Progressive(
            teacher_steps=self.teacher_steps,
            final_steps=self.final_steps,
            schedule=self.schedule,
            parameterization=self.parameterization,
            weighting=self.weighting,
            guidance=self.guidance,
            w_range=tuple(self.w_range),
            teacher_substeps=self.teacher_substeps,
        )

    def stages(self) -> int:
        """Stage 1, then one run per progressive round."""
        return 1 + len(self.progressive().rounds())

    def run(
        self, teacher: Any, train: list[TrainConfig], out: Path, data: Any, opts: RunOptions
    ) -> Path:
        """Stage 1 into ``out/stage1``, then the progressive rounds (see the module doc)."""
        return guided_stages(teacher, self, train[0], train[1:], out, data, opts)


class GuidanceLoss:
    """Stage 1: ``w(sigma) * ||D_s(x, sigma, y, w) - [D_u + w (D_c - D_u)]||^2`` per sample.

    ``t ~ U[0, T-1]`` (continuous), ``sigma = sigma(t)``, ``x = x0 + sigma * eps`` and
    ``w ~ U(w_range)``; the teacher is the unguided conditional denoiser, guided against its
    spec's unconditional input.
    """

    def __init__(self, config: Guided) -> None:
        self.config = config
        self.weight = WEIGHTINGS[config.stage1_weighting]

    def __call__(
        self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: LossContext
    ) -> torch.Tensor:
        lo, hi = self.config.w_range
        view = (-1,) + (1,) * (x0.ndim - 1)
        # 1. a timestep, its sigma, the noisy input and a guidance scale per sample
        t = ctx.rand() * (teacher.num_train_timesteps - 1)
        sigma = teacher.t_to_sigma(t.double().cpu()).to(x0.device)
        x = x0 + sigma.view(view).to(x0.dtype) * ctx.randn(*x0.shape[1:])
        w = lo + (hi - lo) * ctx.rand()
        # 2. the guided teacher: cond and uncond in one batched forward
        with torch.no_grad():
            target = guidance(teacher, w)(x, sigma, **cond)
        # 3. one student forward with w as an input
        pred = student(x, sigma, **cond, guidance_scale=w)
        err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return self.weight(sigma, sigma).to(err.dtype) * err


def guided_stages(
    teacher: Any,
    config: Guided,
    stage1: TrainConfig,
    stage2: list[TrainConfig],
    out_dir: Path,
    data: TrainData,
    opts: RunOptions,
) -> Path:
    """Stage 1 into ``out_dir/stage1``, then progressive rounds; return the last student path.

    Args:
        teacher: the unguided, conditional discrete VP teacher denoiser whose spec names an
            unconditional input.
        stage1, stage2: loop settings of stage 1 and of each stage-2 round.
    """
    teacher.cond_spec.uncond_values()  # refuses a teacher without an unconditional input
    digest = weights_digest(network_of(teacher))
    prog = config.progressive()
    grid = teacher_grid(teacher, prog)
    recipe = Recipe(
        "ddim", tuple(grid.tolist()), config.guidance, w_conditioned=True, w_range=prog.w_range
    )
    path = out_dir / "stage1" / "student.safetensors"
    done = {"stage": 1, "train": stage1.to_dict(), "guided": config.to_dict()}
    if opts.resume and path.is_file():
        check_finished(path, done, opts.force)
        student, _ = load_student(path)
    else:
        student = make_student(teacher, config.stage1_parameterization, w_conditioned=True)
        res = train(
            student,
            GuidanceLoss(config),
            stage1,
            path.parent,
            data=data,
            teacher=teacher,
            resume=opts.resume,
            force=opts.force,
            evaluate=opts.evaluate(recipe) if opts.evaluate is not None else None,
            run_info={"teacher": digest, "stage": 1},
            progress=opts.progress,
        )
        student = res.best
        save_student(path, student, recipe, method="guided", **done)
    # Stage 2: progressive rounds on the w-conditioned student, w drawn per sample.
    info = {"teacher": digest, "stage": 2}
    return progressive_rounds(student, prog, stage2, out_dir, data, opts, run_info=info)

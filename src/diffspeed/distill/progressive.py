"""Progressive distillation (Salimans & Ho 2022, Algorithm 2).

Round by round, a student learns to take ONE DDIM step where its teacher takes TWO; after a
round the student becomes the teacher and the step count halves (N -> N/2 -> ... -> 1). In
the VE convention a DDIM step from ``sigma`` to ``sigma'`` is
``x' = D(x, sigma) + sigma'/sigma * (x - D(x, sigma))``. Two teacher steps
``sigma -> sigma_mid -> sigma_next`` land on ``x''``; the x0 the student must predict so that
its one step lands there too is (Algorithm 2, ``x~``)::

    x_tilde = (x'' - (sigma_next / sigma) * x) / (1 - sigma_next / sigma)

and the loss is ``w(sigma) * ||D_student(x, sigma) - x_tilde||^2`` with the truncated-SNR
weight ``w = max(SNR, 1)``, ``SNR = 1 / sigma^2`` (sec. 4, "truncated SNR weighting").
The student is v-parameterised by default (sec. 4), initialised from its teacher.

The step grids are nested: round ``k`` uses every second point of round ``k-1``'s grid, and a
student's recipe records its exact sigmas.

Salimans & Ho start the chain from a teacher sampled with 1024+ DDIM steps, i.e. close to the
exact ODE. A CPU-sized chain starts at 32-64 steps, where two DDIM steps of the original
teacher are far from the ODE; ``teacher_substeps > 1`` makes the *first* round's target the
ODE solution instead (each half step integrated with that many DPM-Solver++(2S) steps,
geometric in sigma), so the chain inherits the ODE's quality rather than DDIM-2N's. Later
rounds match their teacher's DDIM steps as in the paper (a student is only accurate on its
grid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.core.contract import network_of
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.distill.students import (
    SCALE_KEY,
    Recipe,
    check_finished,
    frozen_copy,
    load_student,
    make_student,
    save_student,
)
from diffspeed.distill.trainer import LossContext, TrainConfig, TrainData, train
from diffspeed.errors import ConfigError
from diffspeed.models.io import weights_digest

log = logging.getLogger("diffspeed")

#: TrainConfig values the command line of the step-distillation methods starts from.
STEP_TRAIN: dict[str, Any] = {
    "steps": 300,
    "lr": 2e-4,
    "warmup": 20,
    "ema_decay": 0.99,
    "checkpoint_every": 50,
}

#: Loss weightings ``w(sigma, sigma_next)`` of float64 ``[B]`` sigmas (VE: SNR = 1 / sigma^2).
WEIGHTINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    # max(SNR, 1): Salimans & Ho 2022, sec. 4 ("truncated SNR")
    "truncated_snr": lambda s, s_next: torch.clamp(s.pow(-2), min=1.0),
    # SNR + 1: the v-prediction loss seen in x-space (Salimans & Ho 2022, sec. 4)
    "snr_plus_one": lambda s, s_next: s.pow(-2) + 1.0,
    # the student's landing error in units of the next noise level, ((1 - s'/s) / s')^2,
    # i.e. the eps-space error the next step inherits; the last step (s' = 0) uses max(SNR, 1)
    "next_snr": lambda s, s_next: torch.where(
        s_next > 0,
        (1 - s_next / s).pow(2) / s_next.clamp(min=1e-12).pow(2),
        torch.clamp(s.pow(-2), min=1.0),
    ),
    # SNR: x0 error in eps units (the teacher's own training loss); for 1:1 matching
    "snr": lambda s, s_next: s.pow(-2),
    "uniform": lambda s, s_next: torch.ones_like(s),
}


@register("progressive")
@dataclass(frozen=True)
class Progressive(MethodConfig):
    """Progressive distillation (Salimans & Ho 2022): halve the steps round by round.

    Attributes:
        teacher_steps: DDIM steps of the original teacher (the first round's teacher grid);
            a power of two times ``final_steps``.
        final_steps: steps of the last student.
        schedule: diffspeed schedule of the first teacher grid (``"trailing"``: uniform in
            the discrete timestep, starting at t = T-1); later grids take every second point.
        parameterization: what the student network predicts: ``"v"``, ``"x0"`` or ``"eps"``.
        weighting: a name in :data:`WEIGHTINGS` (``"truncated_snr"``: max(SNR, 1), the
            paper's; ``"next_snr"``: the landing error in units of the next noise level).
        guidance: classifier-free guidance scale of the original teacher (1: none), against
            its spec's unconditional input; the students bake it in (one forward per step
            instead of two).
        w_range: for a guidance-conditioned teacher (guided distillation, stage 2): the
            range ``w`` is drawn from each sample (then ``guidance`` is the default scale).
        teacher_substeps: the first round integrates each of its teacher's half steps with
            this many second-order steps (:func:`ode_steps`; 1: one DDIM step, Algorithm 2
            as written).
    """

    teacher_steps: int = 16
    final_steps: int = 1
    schedule: str = "trailing"
    parameterization: str = "v"
    weighting: str = "next_snr"
    guidance: float = 2.0
    w_range: tuple[float, float] | None = None
    teacher_substeps: int = 1

    train_defaults: ClassVar[dict[str, Any]] = STEP_TRAIN

    def __post_init__(self) -> None:
        n, f = self.teacher_steps, self.final_steps
        if self.teacher_substeps < 1:
            raise ConfigError(f"teacher_substeps must be >= 1, got {self.teacher_substeps}")
        if f < 1 or n <= f or n % f or (n // f) & (n // f - 1):
            raise ConfigError(
                f"teacher_steps ({n}) must be final_steps ({f}) times a power of two >= 2"
            )
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"unknown weighting {self.weighting!r}; choose one of: {', '.join(WEIGHTINGS)}"
            )
        if self.w_range is not None and not 0 <= self.w_range[0] <= self.w_range[1]:
            raise ConfigError(f"w_range must be (low, high) with 0 <= low <= high: {self.w_range}")

    def rounds(self) -> list[int]:
        """Student step counts, one per round: ``teacher_steps/2, ..., final_steps``."""
        out, n = [], self.teacher_steps
        while n > self.final_steps:
            n //= 2
            out.append(n)
        return out

    def stages(self) -> int:
        """One training run per round."""
        return len(self.rounds())

    def run(
        self, teacher: Any, train: list[TrainConfig], out: Path, data: Any, opts: RunOptions
    ) -> Path:
        """Guide the teacher at ``guidance`` (unless w-conditioned) and run every round."""
        guided = teacher
        if self.w_range is None and self.guidance != 1.0:
            from diffspeed.core.guidance import guidance

            guided = guidance(teacher, self.guidance)
        info = {"teacher": weights_digest(network_of(teacher))}
        return progressive_rounds(guided, self, train, out, data, opts, run_info=info)


def ddim_step(
    den: Any, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond: dict
) -> torch.Tensor:
    """One DDIM (Euler, VE form) step of ``den`` from ``sigma [B]`` to ``sigma_next [B]``."""
    d = den(x, sigma, **cond)
    view = (-1,) + (1,) * (x.ndim - 1)
    return d + (sigma_next / sigma).view(view).to(x.dtype) * (x - d)


def ode_steps(
    den: Any,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    cond: dict,
    substeps: int,
) -> torch.Tensor:
    """Integrate the ODE of ``den`` from ``sigma [B]`` to ``sigma_next [B]`` per sample.

    ``substeps`` second-order exponential-integrator steps (DPM-Solver++(2S): a DDIM step to
    the geometric midpoint, then a DDIM step with the midpoint's denoised value), on a grid
    geometric in sigma. Where ``sigma_next`` is 0 the grid ends at the model's ``sigma_min``
    and a final denoising step lands on the data (as the reference sampler does).
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    to_zero = sigma_next <= 0
    end = torch.where(to_zero, torch.full_like(sigma_next, float(den.sigma_min)), sigma_next)
    ratio = end / sigma
    a = sigma
    for j in range(1, substeps + 1):
        b = sigma * ratio.pow(j / substeps)
        mid = (a * b).sqrt()
        d_mid = den(ddim_step(den, x, a, mid, cond), mid, **cond)
        x = d_mid + (b / a).view(view).to(x.dtype) * (x - d_mid)
        a = b
    if bool(to_zero.any()):
        x = torch.where(to_zero.view(view), den(x, end, **cond), x)
    return x


def draw_guidance(
    w_range: tuple[float, float] | None, ctx: LossContext, cond: dict[str, Any]
) -> dict[str, Any]:
    """``cond`` plus ``guidance_scale ~ U(w_range)`` per sample (unchanged if no range)."""
    if w_range is None:
        return cond
    lo, hi = w_range
    return {**cond, SCALE_KEY: lo + (hi - lo) * ctx.rand()}


class ProgressiveLoss:
    """Per-sample loss of one progressive-distillation round.

    Args:
        teacher_sigmas: the teacher's grid ``[2N + 1]`` (float64, trailing 0); the student
            steps from ``teacher_sigmas[2i]`` to ``teacher_sigmas[2i + 2]``.
        config: the method settings (weighting, guidance range).
        substeps: second-order steps per teacher half step (1: one DDIM step each, the paper's
            target); :func:`progressive_rounds` uses ``config.teacher_substeps`` in the first
            round only.
    """

    def __init__(
        self, teacher_sigmas: torch.Tensor, config: Progressive, substeps: int = 1
    ) -> None:
        s = torch.as_tensor(teacher_sigmas, dtype=torch.float64)
        if s.numel() < 3 or (s.numel() - 1) % 2 or s[-1] != 0:
            raise ConfigError("teacher_sigmas must have 2N + 1 entries ending with 0")
        self.sigmas = s
        self.config = config
        self.weight = WEIGHTINGS[config.weighting]
        self.substeps = substeps

    def step(self, teacher: Any, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, cond):
        """One teacher half step: DDIM, or ``substeps`` second-order steps along the ODE."""
        if self.substeps == 1:
            return ddim_step(teacher, x, s, s_next, cond)
        return ode_steps(teacher, x, s, s_next, cond, self.substeps)

    def __call__(
        self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: LossContext
    ) -> torch.Tensor:
        n_student = (self.sigmas.numel() - 1) // 2
        cond = draw_guidance(self.config.w_range, ctx, cond)
        # 1. a student step i, its start / teacher midpoint / end sigmas
        i = ctx.randint(0, n_student).cpu()
        s, s_mid, s_next = (self.sigmas[2 * i + k].to(x0.device) for k in range(3))
        # 2. x at sigma from data: x = x0 + sigma * eps
        view = (-1,) + (1,) * (x0.ndim - 1)
        x = x0 + s.view(view).to(x0.dtype) * ctx.randn(*x0.shape[1:])
        # 3. two teacher steps -> x''; the x0 that one DDIM step needs to land there
        with torch.no_grad():
            x_2 = self.step(teacher, self.step(teacher, x, s, s_mid, cond), s_mid, s_next, cond)
            ratio = (s_next / s).view(view)
            target = ((x_2.double() - ratio * x.double()) / (1 - ratio)).to(x0.dtype)
        # 4. weighted x0 regression of the student's single step
        pred = student(x, s, **cond)
        err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return self.weight(s, s_next).to(err.dtype) * err


def teacher_grid(teacher: Any, config: Progressive) -> torch.Tensor:
    """The first round's teacher sigmas ``[teacher_steps + 1]`` (float64, trailing 0)."""
    from diffspeed.solvers.schedules import get_sigmas

    return get_sigmas(teacher, config.schedule, config.teacher_steps)


def progressive_rounds(
    teacher: Any,
    config: Progressive,
    runs: list[TrainConfig],
    out_dir: Path,
    data: TrainData,
    opts: RunOptions,
    *,
    run_info: dict[str, Any] | None = None,
) -> Path:
    """Run every round; return the path of the last student.

    Round ``k`` trains in ``out_dir/round-<steps>`` and writes ``student.safetensors`` (+ JSON,
    with its :class:`Recipe`: DDIM, ``steps``, its sigmas). A finished round is not rerun;
    an interrupted one resumes from its checkpoint (with ``opts.resume``).

    Args:
        teacher: the first round's teacher denoiser (guided, or w-conditioned as the config
            says).
        runs: the loop settings, one per round.
        data: training data (``x = x0 + sigma * eps`` is built from it).
        run_info: facts identifying the run (e.g. the teacher digest), checkpoint-hashed.
    """
    rounds = config.rounds()
    grid = teacher_grid(teacher, config)
    w_conditioned = config.w_range is not None
    student = make_student(teacher, config.parameterization, w_conditioned=w_conditioned)
    path = out_dir
    for k, (steps, tc) in enumerate(zip(rounds, runs, strict=True)):
        stride = config.teacher_steps // (2 * steps)
        t_sigmas = grid[::stride]  # this round's teacher grid (2 * steps steps)
        recipe = Recipe(
            "ddim",
            tuple(t_sigmas[::2].tolist()),
            guidance=config.guidance,
            w_conditioned=w_conditioned,
            w_range=config.w_range,
        )
        round_dir = out_dir / f"round-{steps}"
        path = round_dir / "student.safetensors"
        done = {"round": k, "train": tc.to_dict(), "config": config.to_dict()}
        if opts.resume and path.is_file():
            check_finished(path, done, opts.force)
            log.info("round %d (%d steps) already done: %s", k, steps, path)
            best, _ = load_student(path)
        else:
            loss = ProgressiveLoss(t_sigmas, config, config.teacher_substeps if k == 0 else 1)
            info = {**(run_info or {}), "round": k, "steps": steps, "method": config.to_dict()}
            res = train(
                student,
                loss,
                tc,
                round_dir,
                data=data,
                teacher=teacher,
                resume=opts.resume,
                force=opts.force,
                evaluate=opts.evaluate(recipe) if opts.evaluate is not None else None,
                run_info=info,
                progress=opts.progress,
            )
            best = res.best
            save_student(path, best, recipe, method="progressive", **done)
        # The student becomes the teacher; the next student starts from its weights.
        teacher = frozen_copy(best)
        student = make_student(best, config.parameterization, w_conditioned=w_conditioned)
    return path

"""Knowledge distillation of the sampler (Luhman & Luhman 2021, "Knowledge Distillation in
Iterative Generative Models for Improved Sampling Speed").

The teacher's multi-step ODE sampler defines a deterministic map noise -> image. Generate a
dataset of ``(noise, label, teacher output)`` once (cached on disk), then train the student to
map the same noise to the same output in ``student_steps`` DDIM steps, backpropagating
through its sampler: ``loss = ||sample_student(z) - sample_teacher(z)||^2`` (their eq. 4).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.core.contract import network_of
from diffspeed.distill.methods import MethodConfig, RunOptions, register
from diffspeed.distill.progressive import STEP_TRAIN
from diffspeed.distill.students import Recipe, make_student, save_student
from diffspeed.distill.trainer import LossContext, TrainConfig, TrainData, train
from diffspeed.errors import ConfigError
from diffspeed.models.io import cached_tensors, weights_digest
from diffspeed.progress import track

log = logging.getLogger("diffspeed")


@register("kd")
@dataclass(frozen=True)
class KD(MethodConfig):
    """Knowledge distillation of the sampler (Luhman & Luhman 2021): map the teacher's noise
    to its ODE output in ``student_steps`` steps. Makes its own data from the teacher.

    Attributes:
        student_steps: DDIM steps of the student (1 = one-step generator).
        schedule: diffspeed schedule of the student's sigmas.
        parameterization: what the student network predicts (``"v"``, ``"x0"``, ``"eps"``).
        guidance: classifier-free guidance scale of the teacher sampler (baked in).
        teacher_solver, teacher_steps, teacher_schedule: the teacher's ODE sampler.
        num_pairs: size of the (noise, label, output) dataset.
        seed: noise seeds are ``seed * 1_000_003 + i`` (1: disjoint from the reference set).
    """

    student_steps: int = 1
    schedule: str = "trailing"
    parameterization: str = "v"
    guidance: float = 2.0
    teacher_solver: str = "heun"
    teacher_steps: int = 50
    teacher_schedule: str = "karras"
    num_pairs: int = 2000
    seed: int = 1

    needs_data: ClassVar[bool] = False
    train_defaults: ClassVar[dict[str, Any]] = STEP_TRAIN

    def __post_init__(self) -> None:
        if self.student_steps < 1 or self.teacher_steps < 1 or self.num_pairs < 1:
            raise ConfigError("student_steps, teacher_steps and num_pairs must be >= 1")

    def run(
        self, teacher: Any, train: list[TrainConfig], out: Path, data: Any, opts: RunOptions
    ) -> Path:
        """Build (or load) the teacher dataset, train, write ``out/student.safetensors``."""
        return kd_student(teacher, self, train[0], out, opts)


class KDLoss:
    """``||student sampler(z) - teacher sampler(z)||^2`` per sample (Luhman & Luhman, eq. 4).

    The noise ``z`` of each row comes from ``ctx.extras["noise"]`` (the dataset's), the target
    is the row's ``x0`` (the teacher's output for that noise and label).
    """

    def __init__(self, sigmas: torch.Tensor, config: KD) -> None:
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        self.config = config

    def __call__(
        self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: LossContext
    ) -> torch.Tensor:
        from diffspeed.solvers import sample

        # the student's sampler from the same noise, with gradients through every step
        out = sample(
            student, ctx.extras["noise"], "ddim", schedule=self.sigmas, cond=cond, grad=True
        )
        return (out.float() - x0.float()).pow(2).flatten(1).mean(1)


def teacher_dataset(
    teacher: Any,
    config: KD,
    cache: str | Path,
    *,
    batch_size: int = 250,
    progress: bool = False,
) -> TrainData:
    """The ``(noise, cond, teacher output)`` dataset, computed once and cached at ``cache``.

    The conditions are the teacher spec's example conditions, the noise has its sample shape.
    The cache is refused (and recomputed) when it was made by another config or teacher.
    """
    from diffspeed.distill.students import sample_shape
    from diffspeed.solvers import sample, seeded_noise

    spec = teacher.cond_spec
    settings = (config.to_dict(), weights_digest(teacher), spec.keys)
    key = hashlib.sha256(repr(settings).encode()).hexdigest()

    def compute() -> dict[str, torch.Tensor]:
        seeds = [config.seed * 1_000_003 + i for i in range(config.num_pairs)]
        noise = seeded_noise(seeds, sample_shape(spec))
        cond = spec.example_cond(config.num_pairs)
        chunks = track(range(0, config.num_pairs, batch_size), "teacher outputs", progress)
        outs = []
        for i in chunks:
            sl = slice(i, i + batch_size)
            outs.append(
                sample(
                    teacher,
                    noise[sl].to(teacher.device),
                    config.teacher_solver,
                    config.teacher_steps,
                    config.teacher_schedule,
                    cond={k: v.to(teacher.device) for k, v in spec.select(cond, sl).items()},
                ).cpu()
            )
        return {
            "noise": noise,
            "output": torch.cat(outs),
            **{f"cond.{k}": v for k, v in cond.items()},
        }

    t = cached_tensors(cache, key[:16], compute)
    cond = {k[len("cond.") :]: v for k, v in t.items() if k.startswith("cond.")}
    return TrainData(t["output"], cond, {"noise": t["noise"]})


def kd_student(
    teacher: Any, config: KD, train_config: TrainConfig, out_dir: Path, opts: RunOptions
) -> Path:
    """Build (or load) the teacher dataset, train, write ``out_dir/student.safetensors``.

    Args:
        teacher: the unguided teacher denoiser; guided at ``config.guidance`` here (against
            its spec's unconditional input) when that is not 1.
    """
    from diffspeed.core.guidance import guidance
    from diffspeed.solvers.schedules import get_sigmas

    sampler = guidance(teacher, config.guidance) if config.guidance != 1.0 else teacher
    cache = out_dir / "teacher_data.safetensors"
    data = teacher_dataset(sampler, config, cache, progress=opts.progress)
    student = make_student(teacher, config.parameterization)
    sigmas = get_sigmas(student, config.schedule, config.student_steps)
    recipe = Recipe("ddim", tuple(sigmas.tolist()), guidance=config.guidance)
    res = train(
        student,
        KDLoss(sigmas, config),
        train_config,
        out_dir,
        data=data,
        resume=opts.resume,
        force=opts.force,
        evaluate=opts.evaluate(recipe) if opts.evaluate is not None else None,
        run_info={"teacher": weights_digest(network_of(teacher))},
        progress=opts.progress,
    )
    path = out_dir / "student.safetensors"
    return save_student(path, res.best, recipe, method="kd", kd=config.to_dict())

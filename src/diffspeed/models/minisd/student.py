"""mini-sd's distilled few-step student: progressive distillation with mini-sd's guidance baked
in, run through ``diffspeed.distill`` and exported as a diffusers pipeline folder whose UNet
predicts v and whose DDIM scheduler takes the student's trailing grid.

    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipe("a handwritten seven", num_inference_steps=4, guidance_scale=1.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffspeed.models.minisd.lora import GUIDANCE, lcm_lora_data
from diffspeed.models.minisd.quality import load_pipeline, mini_sd_denoiser, mini_sd_path


def train_student(
    out: str | Path,
    *,
    teacher_steps: int = 16,
    final_steps: int = 4,
    steps: tuple[int, ...] = (500, 700),
    batch_size: int = 64,
    lr: float = 2e-4,
    substeps: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Distil mini-sd (guided at :data:`GUIDANCE`) into a ``final_steps``-step v-predicting
    student by progressive rounds ``teacher_steps -> ... -> final_steps`` (resumable run in
    ``out``); returns the final student's ``.safetensors``.

    The first round's target for one student step is two DDIM steps of the guided teacher
    (``substeps=1``, Salimans & Ho's Algorithm 2), or the teacher's ODE with ``substeps``
    second-order steps per half step; every round starts from its teacher's weights, EMA 0.995,
    cosine learning rate. The defaults made the shipped student.
    """
    from diffspeed.distill import Progressive, TrainConfig, distill

    pipe = load_pipeline()
    den = mini_sd_denoiser(pipe)
    cfg = Progressive(
        teacher_steps=teacher_steps,
        final_steps=final_steps,
        guidance=GUIDANCE,
        teacher_substeps=substeps,
    )
    rounds = len(cfg.rounds())
    if len(steps) != rounds:
        from diffspeed.errors import ConfigError

        raise ConfigError(
            f"{teacher_steps} -> {final_steps} takes {rounds} rounds; give {rounds} step counts "
            f"(got {len(steps)})"
        )
    train = [
        TrainConfig(
            steps=n,
            batch_size=batch_size,
            lr=lr,
            warmup=50,
            ema_decay=0.995,
            checkpoint_every=100,
            log_every=25,
            seed=seed,
        )  # fmt: skip
        for n in steps
    ]
    return distill(den, cfg, train=train, out=out, data=lcm_lora_data(pipe, den, seed),
                   progress=progress)  # fmt: skip


def mini_sd_student_path() -> Path:
    """The shipped 4-step progressive student of mini-sd (int8 UNet weights, diffspeed's
    student format; :func:`student_pipeline` puts it into a diffusers pipeline)."""
    return mini_sd_path().parent / "mini-sd-students" / "progressive-4.safetensors"


def student_pipeline(student: str | Path | None = None) -> Any:
    """mini-sd with a distilled student's UNet (v prediction) and a trailing ``DDIMScheduler``:
    call it with ``guidance_scale=1`` and the student's step count (default student: the
    shipped 4-step one, :func:`mini_sd_student_path`)."""
    from diffusers import DDIMScheduler

    from diffspeed.core.contract import network_of
    from diffspeed.distill import load_student

    den, _ = load_student(str(student or mini_sd_student_path()))
    pipe = load_pipeline()
    pipe.unet = network_of(den)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, prediction_type="v_prediction", timestep_spacing="trailing"
    )
    return pipe


def export_pipeline(student: str | Path, out: str | Path) -> Path:
    """Write :func:`student_pipeline` as a diffusers pipeline folder ``out`` (atomically)."""
    from diffspeed.atomic import atomic_dir

    pipe = student_pipeline(student)
    with atomic_dir(Path(out)) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return Path(out)


def ship_student(student: str | Path) -> Path:
    """Store ``student`` (int8) as the package's :func:`mini_sd_student_path`."""
    from diffspeed.distill.students import load_student, read_student_config, save_student

    den, recipe = load_student(str(student))
    info = read_student_config(student)["info"]
    return save_student(mini_sd_student_path(), den, recipe, int8=True, **info)

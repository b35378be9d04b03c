"""The bench row kinds that sample distilled students, one per kind of student a method writes.

* ``{method = "student", student = "progressive-4"}``: a fixed-step student (progressive,
  guided, KD; a shipped name or a ``.safetensors`` path) with its recipe: the solver and the
  exact sigmas it was distilled for, one network evaluation per step. A w-conditioned
  (guided-distilled) student samples at the row's guidance scale (default: the bench's); a
  student with a baked-in scale samples at it and refuses a row that asks for another one.
* ``{method = "consistency", student = "lcm", steps = 4}``: a consistency student (CD, CT,
  LCM) with the ``lcm`` sampler at any step count.
* ``{method = "lcm-lora", student = "lcm-lora", steps = 4}``: an LCM-LoRA adapter (a shipped
  name or a directory) applied to the bench's model (``options = {base = "ft.safetensors"}``
  applies it to another fine-tune instead).

The bench resolves these kinds through :data:`~diffspeed.distill.methods.DISTILLERS` (each
method names its ``bench_row``); this module does not import the bench.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import network_of
from diffspeed.distill.students import as_cond, load_student, sample_student
from diffspeed.errors import ConfigError
from diffspeed.models.io import param_bytes


class StudentGenerator:
    """Generates with a fixed-step student (see :func:`diffspeed.distill.sample_student`)."""

    def __init__(self, name: str, ctx: Any, guidance: float) -> None:
        self.student = load_student(name, device=ctx.device)
        self.guidance = guidance
        self.nfe = self.rounds = 0
        self.model_size_bytes = param_bytes(network_of(self.student[0]))

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """Sample ``noise`` with the student's recipe (deterministic: seeds are unused)."""
        den, recipe = self.student
        scale = self.guidance if recipe.w_conditioned else None
        x, info = sample_student(
            self.student, noise.to(den.device), cond, guidance=scale, return_info=True
        )
        self.nfe = self.rounds = int(info["nfe"])
        return x


class ConsistencyGenerator:
    """Few-step consistency sampling (``lcm`` solver and schedule), one evaluation per step."""

    def __init__(self, student: tuple[Any, Any], steps: int, guidance: float | None, size: int):
        self.student, self.steps, self.guidance = student, steps, guidance
        self.nfe = self.rounds = steps
        self.model_size_bytes = size

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """Sample; ``seeds`` seed the re-noising of each sample."""
        from diffspeed.distill.consistency import sample_consistency

        den = self.student[0]
        return sample_consistency(
            self.student,
            noise.to(den.device),
            as_cond(den, cond),
            self.steps,
            guidance=self.guidance,
            generator=list(seeds),
        )


def _steps(row: Any) -> int:
    if row.steps is None or row.steps < 1:
        raise ConfigError(f"row {row.label!r}: a {row.kind} row needs steps >= 1")
    return int(row.steps)


def _baked(row: Any, recipe: Any, scale: float) -> None:
    """Refuse a row asking a student with a baked-in guidance scale for another one."""
    if not recipe.w_conditioned and scale != recipe.guidance:
        raise ConfigError(
            f"row {row.label!r}: student {row.student!r} bakes in guidance {recipe.guidance}; "
            f"set guidance = {recipe.guidance} (only w-conditioned students take a scale)"
        )


def student_row(row: Any, ctx: Any) -> StudentGenerator:
    """Builder of ``student`` rows."""
    if not row.student:
        raise ConfigError(f"row {row.label!r}: a student row needs 'student' (name or path)")
    _, recipe = load_student(row.student)
    if recipe.w_conditioned:
        scale = ctx.scale(row)
    else:  # a baked-in scale: the row may only restate it
        scale = recipe.guidance if row.guidance is None else float(row.guidance)
    _baked(row, recipe, scale)
    if row.steps is not None and row.steps != recipe.steps:
        raise ConfigError(
            f"row {row.label!r}: student {row.student!r} samples in {recipe.steps} steps, "
            f"not {row.steps}; drop 'steps' or pick the {row.steps}-step student"
        )
    return StudentGenerator(row.student, ctx, scale)


def consistency_row(row: Any, ctx: Any) -> ConsistencyGenerator:
    """Builder of ``consistency`` rows."""
    from diffspeed.distill.consistency import load_consistency

    if not row.student:
        raise ConfigError(f"row {row.label!r}: a consistency row needs 'student' (cd, lcm, path)")
    den, recipe = load_consistency(row.student, device=ctx.device)
    scale = ctx.scale(row)
    _baked(row, recipe, scale)
    guidance = scale if recipe.w_conditioned else None
    return ConsistencyGenerator((den, recipe), _steps(row), guidance, param_bytes(network_of(den)))


def lcm_lora_row(row: Any, ctx: Any) -> ConsistencyGenerator:
    """Builder of ``lcm-lora`` rows."""
    from diffspeed.distill.lora import load_lora, read_lora
    from diffspeed.distill.students import STUDENTS_DIR, Recipe

    path = Path(row.student or "lcm-lora")
    if not path.exists():
        path = STUDENTS_DIR / str(row.student or "lcm-lora")
    base = ctx.denoiser
    if "base" in row.options:
        from diffspeed.models.teacher import load_teacher

        base = load_teacher(row.options["base"], device=ctx.device)
    _, _, info = read_lora(path)
    trained = float(info.get("sampler", {}).get("guidance", 1.0))
    if ctx.scale(row) != trained:
        raise ConfigError(
            f"row {row.label!r}: the adapter distils guidance {trained}; set guidance = {trained}"
        )
    den = load_lora(path, base)
    return ConsistencyGenerator(
        (den, Recipe("lcm", (0.0,))), _steps(row), None, param_bytes(network_of(den))
    )


#: Row builders by the ``bench_row`` kind the method configs name.
ROW_BUILDERS: dict[str, Callable[[Any, Any], Any]] = {
    "student": student_row,
    "consistency": consistency_row,
    "lcm-lora": lcm_lora_row,
}

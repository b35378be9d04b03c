"""The ``student`` row kind of ``diffspeed bench`` / ``diffspeed demo``.

A row ``{method = "student", student = "progressive-4"}`` samples a distilled student (a
shipped name or a ``.safetensors`` path) with its recipe: the solver and the exact sigmas it
was distilled for, one network evaluation per step. A w-conditioned (guided-distilled)
student samples at the row's guidance scale (default: the bench's); a student with a baked-in
scale samples at it and refuses a row that asks for another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffspeed.bench.methods import BenchContext, register_method
from diffspeed.distill.students import load_student, sample_student
from diffspeed.errors import ConfigError


class StudentGenerator:
    """Generates with a distilled student (see :func:`diffspeed.distill.sample_student`)."""

    def __init__(self, name: str, ctx: BenchContext, guidance: float) -> None:
        self.student = load_student(name, device=ctx.device)
        self.guidance = guidance
        self.nfe = 0
        self.rounds = 0
        den = self.student[0]
        self.model_size_bytes = sum(p.numel() * p.element_size() for p in den.parameters())

    def generate(self, noise: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> Any:
        """Sample ``noise`` with the student's recipe (deterministic: seeds are unused)."""
        den, recipe = self.student
        scale = self.guidance if recipe.w_conditioned else None
        x, info = sample_student(
            self.student, noise.to(den.device), labels, guidance=scale, return_info=True
        )
        self.nfe = self.rounds = int(info["nfe"])
        return x


@register_method("student", family="student")
def _student(row: Any, ctx: BenchContext) -> StudentGenerator:
    if not row.student:
        raise ConfigError(f"row {row.label!r}: a student row needs 'student' (name or path)")
    _, recipe = load_student(row.student)
    if recipe.w_conditioned:
        scale = ctx.scale(row)
    else:  # a baked-in scale: the row may only restate it
        scale = recipe.guidance if row.guidance is None else float(row.guidance)
    if not recipe.w_conditioned and scale != recipe.guidance:
        raise ConfigError(
            f"row {row.label!r}: student {row.student!r} bakes in guidance {recipe.guidance}; "
            f"set guidance = {recipe.guidance} (only guided-distilled students take a scale)"
        )
    if row.steps is not None and row.steps != recipe.steps:
        raise ConfigError(
            f"row {row.label!r}: student {row.student!r} samples in {recipe.steps} steps, "
            f"not {row.steps}; drop 'steps' or pick the {row.steps}-step student"
        )
    return StudentGenerator(row.student, ctx, scale)

"""Bench row kinds for consistency models: ``consistency`` and ``lcm-lora``.

``{method = "consistency", student = "lcm", steps = 4}`` samples a consistency student (a
shipped name — ``cd``, ``lcm`` — or a ``student.safetensors`` path) with the ``lcm`` sampler
at any step count; a w-conditioned student takes the row's guidance scale.
``{method = "lcm-lora", student = "lcm-lora", steps = 4}`` applies an LCM-LoRA adapter (a
shipped name or a directory) to the bench's model (``options = {base = "ft.safetensors"}``
applies it to another fine-tune instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffspeed.bench.methods import BenchContext, register_method
from diffspeed.errors import ConfigError


class ConsistencyGenerator:
    """Few-step consistency sampling (``lcm`` solver and schedule), one evaluation per step."""

    def __init__(self, student: tuple[Any, Any], steps: int, guidance: float | None, size: int):
        self.student, self.steps, self.guidance = student, steps, guidance
        self.nfe = self.rounds = steps
        self.model_size_bytes = size

    def generate(self, noise: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> Any:
        """Sample; ``seeds`` seed the re-noising of each sample."""
        from diffspeed.distill.consistency import sample_consistency

        den = self.student[0]
        return sample_consistency(
            self.student,
            noise.to(den.device),
            labels,
            self.steps,
            guidance=self.guidance,
            generator=list(seeds),
        )


def _steps(row: Any) -> int:
    if row.steps is None or row.steps < 1:
        raise ConfigError(f"row {row.label!r}: a consistency row needs steps >= 1")
    return int(row.steps)


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@register_method("consistency", family="student")
def _consistency(row: Any, ctx: BenchContext) -> ConsistencyGenerator:
    from diffspeed.distill.consistency import load_consistency

    if not row.student:
        raise ConfigError(f"row {row.label!r}: a consistency row needs 'student' (cd, lcm, path)")
    den, recipe = load_consistency(row.student, device=ctx.device)
    scale = ctx.scale(row)
    if not recipe.w_conditioned and scale != recipe.guidance:
        raise ConfigError(
            f"row {row.label!r}: student {row.student!r} bakes in guidance {recipe.guidance}; "
            f"set guidance = {recipe.guidance} (only the w-conditioned LCM takes a scale)"
        )
    guidance = scale if recipe.w_conditioned else None
    return ConsistencyGenerator((den, recipe), _steps(row), guidance, _bytes(den))


@register_method("lcm-lora", family="student")
def _lcm_lora(row: Any, ctx: BenchContext) -> ConsistencyGenerator:
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
    return ConsistencyGenerator((den, Recipe("lcm", (0.0,))), _steps(row), None, _bytes(den))

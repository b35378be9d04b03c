"""``diffspeed.apply``: put a tuned configuration to work in one line.

* on a diffspeed denoiser it returns a sampler, ``apply(den, "tuned.json")(noise, cond)``;
* on a diffusers pipeline it sets the pipeline's scheduler to diffspeed's
  :class:`~diffspeed.integrations.diffusers.Scheduler` with the tuned solver and schedule and
  installs the tuned cache; the returned handle's ``call_kwargs`` (``num_inference_steps``)
  go to the pipeline call and ``remove()`` restores the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from diffspeed.errors import UnsupportedModelError
from diffspeed.tune.config import Candidate, TunedConfig, load_tuned
from diffspeed.tune.runner import Runner


class TunedSampler:
    """A tuned configuration bound to a denoiser; also a bench ``Generator``.

    Call it as ``sampler(noise, cond=None, seeds=None) -> samples``.
    """

    def __init__(self, denoiser: Any, tuned: TunedConfig, device: Any = None,
                 model_size_bytes: int = 0) -> None:  # fmt: skip
        self.runner = Runner(denoiser, device)
        self.tuned = tuned
        self.candidate: Candidate = tuned.config
        self.nfe = self.rounds = 0
        self.model_size_bytes = model_size_bytes

    def __call__(self, noise: torch.Tensor, cond: Mapping[str, Any] | None = None,
                 seeds: Sequence[int] | None = None) -> torch.Tensor:  # fmt: skip
        """Sample unit Gaussian ``noise [B, C, H, W]`` for ``cond`` (the model's cond keys)."""
        x, stats = self.runner.run(self.candidate, noise, cond, seeds)
        self.nfe = self.rounds = stats.nfe
        return x

    def generate(self, noise: torch.Tensor, cond: Mapping[str, Any], seeds: Sequence[int]) -> Any:
        """The bench's ``Generator.generate``."""
        return self(noise, cond, seeds)


class PipelineHandle:
    """What :func:`apply` did to a pipeline: ``call_kwargs`` for its call; ``remove()`` undoes."""

    def __init__(self, pipe: Any, old_scheduler: Any, stack: ExitStack, steps: int) -> None:
        self.pipe, self._old, self._stack = pipe, old_scheduler, stack
        self.call_kwargs = {"num_inference_steps": steps}

    def remove(self) -> None:
        """Uninstall the cache and give the pipeline its scheduler back."""
        self._stack.close()
        self.pipe.scheduler = self._old

    def __enter__(self) -> PipelineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _schedule_file(source: Any, tuned: TunedConfig) -> str:
    """A schedule JSON holding the tuned sigmas (the tuned file itself when it was a path)."""
    if isinstance(source, str | Path) and Path(source).is_file():
        return str(Path(source).resolve())
    text = json.dumps({"sigmas": list(tuned.config.sigmas or ())})
    path = (
        Path(tempfile.gettempdir())
        / f"diffspeed-tuned-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    )
    path.write_text(text)
    return str(path)


def _apply_pipeline(pipe: Any, tuned: TunedConfig, source: Any) -> PipelineHandle:
    from diffspeed.integrations.diffusers import Scheduler

    c = tuned.config
    if c.student:
        raise UnsupportedModelError(
            f"the tuned config is the student {c.student!r}, which replaces the pipeline's "
            "network; sample it with diffspeed.sample_student, or re-tune with students=()"
        )
    if c.time_shift:
        raise UnsupportedModelError(
            "the tuned config uses an exposure-bias shift, which diffspeed.sample applies and "
            "a diffusers pipeline cannot; re-tune with SearchSpace(time_shifts=()) for pipelines"
        )
    schedule = _schedule_file(source, tuned) if c.sigmas is not None else c.schedule
    old = pipe.scheduler
    stack = ExitStack()
    pipe.scheduler = Scheduler.from_config(
        old.config, solver=c.solver, schedule=schedule, steps=int(c.steps or 1),
        solver_options=dict(c.options) or None,
    )  # fmt: skip
    try:
        if c.cache:
            from diffspeed.cache import apply_cache, config_from_dict

            stack.enter_context(apply_cache(pipe, config_from_dict(dict(c.cache))))
        from diffspeed.tune.space import EXTENSIONS

        for name, cfg in c.extensions.items():
            stack.enter_context(EXTENSIONS[name].install(pipe, cfg))
    except BaseException:
        stack.close()
        pipe.scheduler = old
        raise
    steps = len(c.sigmas) - 1 if c.sigmas is not None else int(c.steps or 1)
    return PipelineHandle(pipe, old, stack, steps)


def apply(target: Any, tuned: str | Path | Mapping[str, Any] | TunedConfig) -> Any:
    """Apply a tuned configuration (a ``diffspeed tune`` file, its document or object).

    Args:
        target: a diffusers pipeline (``pipe.scheduler`` + ``pipe.unet``/``transformer``) or a
            diffspeed denoiser.

    Returns:
        for a pipeline, a :class:`PipelineHandle` (pass ``**handle.call_kwargs`` to the
        pipeline call; ``handle.remove()`` restores it); for a denoiser, a
        :class:`TunedSampler` (``sampler(noise, cond)`` samples with the tuned configuration).
    """
    cfg = load_tuned(tuned)
    if hasattr(target, "scheduler") and hasattr(target, "components"):
        return _apply_pipeline(target, cfg, tuned)
    if callable(target) and hasattr(target, "cond_spec"):
        return TunedSampler(target, cfg)
    raise UnsupportedModelError(
        f"apply needs a diffusers pipeline or a diffspeed denoiser, got {type(target).__name__}"
    )

"""Distillation methods as configs, and the one verb that runs them.

Each method is a small frozen dataclass registered in :data:`DISTILLERS` by name; its fields
are the method's settings (they round-trip through JSON and become the options of
``diffspeed distill METHOD``). :func:`distill` runs any of them on any denoiser whose
conditioning spec it can read::

    diffspeed.distill(teacher, Progressive(teacher_steps=16), train=TrainConfig(steps=300),
                      out="runs/p", data=(latents, {"encoder_hidden_states": embeddings}))
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffspeed.configs import dataclass_from_dict
from diffspeed.errors import ConfigError
from diffspeed.registry import Registry

#: Registered method configs by name (``"progressive"``, ``"lcm-lora"``, ...).
DISTILLERS: Registry[type[MethodConfig]] = Registry("distillation method")

#: ``evaluate(recipe) -> fn(student, step) -> {metric: value}``: a run's periodic evaluation.
EvaluatorFactory = Callable[[Any], Callable[[Any, int], dict[str, float]]]


class MethodConfig:
    """Base of the method configs (frozen dataclasses): JSON round trip and the run hook.

    Class attributes:
        method: the registered name (set by :func:`register`).
        bench_row: the bench row kind that samples this method's students.
        needs_data: whether the method trains on data (``False``: it makes its own).
        train_defaults: :class:`~diffspeed.distill.trainer.TrainConfig` values the command
            line starts from for this method.
    """

    method: ClassVar[str] = ""
    bench_row: ClassVar[str] = "student"
    needs_data: ClassVar[bool] = True
    train_defaults: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        return dataclass_from_dict(cls, d)

    def stages(self) -> int:
        """How many training runs the method makes (one :class:`TrainConfig` each)."""
        return 1

    def run(self, teacher: Any, train: list[Any], out: Path, data: Any, opts: RunOptions) -> Path:
        """Train and write the student(s) into ``out``; return the final student's path."""
        raise NotImplementedError


class RunOptions(typing.NamedTuple):
    """What every method's :meth:`MethodConfig.run` takes besides its teacher and data."""

    resume: bool = True
    progress: bool = False
    evaluate: EvaluatorFactory | None = None
    force: bool = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a method config in :data:`DISTILLERS` as ``name``."""

    def deco(cls: type) -> type:
        cls.method = name
        return DISTILLERS.register(name)(cls)

    return deco


def as_train_data(teacher: Any, data: Any) -> Any:
    """``data`` as :class:`~diffspeed.distill.trainer.TrainData`: a ``TrainData``, ``x0``
    alone, or ``(x0, cond)`` with ``cond`` a dict (or a bare tensor for a one-key model)."""
    from diffspeed.distill.students import as_cond
    from diffspeed.distill.trainer import TrainData

    if data is None or isinstance(data, TrainData):
        return data
    if isinstance(data, torch.Tensor):
        return TrainData(data)
    if isinstance(data, Sequence) and len(data) == 2:
        return TrainData(data[0], as_cond(teacher, data[1]))
    raise ConfigError(
        f"data must be a TrainData, a tensor x0 or a pair (x0, cond); got {type(data).__name__}"
    )


def distill(
    teacher: Any,
    config: MethodConfig,
    *,
    train: Any,
    out: str | Path,
    data: Any = None,
    resume: bool = True,
    progress: bool = False,
    evaluate: EvaluatorFactory | None = None,
    force: bool = False,
) -> Path:
    """Distil ``teacher`` with the method ``config``; return the path of the final student.

    Args:
        teacher: any denoiser whose conditioning spec (``teacher.cond_spec``) the method can
            read: the unconditional input for guided targets, example conditions for
            data-free methods.
        config: a registered method config (see :data:`DISTILLERS`).
        train: the loop settings (a :class:`~diffspeed.distill.trainer.TrainConfig`), or one
            per stage (progressive rounds; guided: stage 1 then its rounds).
        out: run directory (checkpoints, logs, students); an interrupted run resumes.
        data: training data: a ``TrainData``, ``x0`` or ``(x0, cond)`` with ``cond`` the
            teacher's conditioning of each row (e.g. ``{"encoder_hidden_states": [N, L, D]}``).
        resume: continue the run in ``out`` (finished stages are kept); a stage or checkpoint
            written with other settings is refused, naming the differing fields.
        progress: show progress bars.
        evaluate: ``evaluate(recipe) -> fn(student, step) -> {metric: value}`` for periodic
            evaluation (see :func:`~diffspeed.distill.students.recipe_evaluator`).
        force: resume even where the settings changed (finished stages are kept as they are,
            checkpoints continue with the new settings).
    """
    if not is_dataclass(config) or all(DISTILLERS[n] is not type(config) for n in DISTILLERS):
        raise ConfigError(
            f"{type(config).__name__} is not a registered distillation method config; use "
            f"one of: {', '.join(DISTILLERS.names())}"
        )
    n = config.stages()
    runs = list(train) if isinstance(train, Sequence) else [train] * n
    if len(runs) != n:
        raise ConfigError(f"{config.method} trains {n} stage(s); got {len(runs)} train configs")
    data = as_train_data(teacher, data)
    if data is None and config.needs_data:
        raise ConfigError(f"{config.method} trains on data: pass data=(x0, cond)")
    opts = RunOptions(resume, progress, evaluate, force)
    return config.run(teacher, runs, Path(out), data, opts)


def bench_rows() -> dict[str, Callable[[Any, Any], Any]]:
    """The bench row kinds that sample the registered methods' students, with their builders
    (``row, ctx -> generator``), resolved through :data:`DISTILLERS`."""
    import diffspeed.distill  # noqa: F401 - fills DISTILLERS
    from diffspeed.distill.bench import ROW_BUILDERS

    return {DISTILLERS[n].bench_row: ROW_BUILDERS[DISTILLERS[n].bench_row] for n in DISTILLERS}

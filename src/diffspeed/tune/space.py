"""The search space of :func:`diffspeed.tune` and the hook other areas extend it through.

Dimensions: solver x NFE x schedule (named ones, plus AYS / DP schedules tuned on the fly) x
exposure-bias shift x cache config x shipped students, and open :data:`EXTENSIONS` (a
precision / compile / compression dimension registers itself here: how to install its config
around a run, and which variants of a promising candidate to try).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from diffspeed.errors import ConfigError, unknown_name
from diffspeed.registry import Registry
from diffspeed.tune.config import Candidate

#: Deterministic solvers tried by default (stochastic ones would make fidelity meaningless).
DEFAULT_SOLVERS = ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "dpmpp_2s")
#: Named schedules tried by default (the discrete ones only on discrete-time models).
DEFAULT_SCHEDULES = ("trailing", "leading", "karras", "exponential", "linspace")
#: Schedules tuned on the fly for the model (see :mod:`diffspeed.solvers.optimize`).
TUNED_SCHEDULES = ("ays", "dp")
#: Exposure-bias shifts tried on the most promising branches (0 is always tried).
DEFAULT_SHIFTS = (0.01, 0.03)
#: Cache configs tried on the most promising branches.
DEFAULT_CACHES = ({"method": "deepcache", "interval": 2}, {"method": "deepcache", "interval": 3})


@dataclass(frozen=True)
class SearchSpace:
    """What :func:`diffspeed.tune` may choose from.

    Attributes:
        solvers: solver names (deterministic ones; see ``diffspeed solvers``).
        schedules: named schedules.
        tuned_schedules: schedules tuned on the fly for the model (``"ays"``, ``"dp"``).
        max_nfe: the largest NFE considered (a ``nfe=`` budget lowers it).
        time_shifts: exposure-bias shifts tried on the promising branches (0 always is).
        caches: cache config dicts tried on the promising branches.
        students: students to try (shipped names or paths); None: the shipped ones when the
            model is the embedded teacher, none otherwise.
        top_branches: how many of the best (solver, schedule) branches get the refinements
            (tuned schedules, shifts, caches, extensions).
        extensions: names in :data:`EXTENSIONS` to try on the promising candidates.
    """

    solvers: tuple[str, ...] = DEFAULT_SOLVERS
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    tuned_schedules: tuple[str, ...] = TUNED_SCHEDULES
    max_nfe: int = 20
    time_shifts: tuple[float, ...] = DEFAULT_SHIFTS
    caches: tuple[dict[str, Any], ...] = DEFAULT_CACHES
    students: tuple[str, ...] | None = None
    top_branches: int = 3
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from diffspeed.solvers.registry import SCHEDULES, SOLVERS

        for name in self.solvers:
            spec = SOLVERS[name]
            if spec.stochastic or spec.steps is None:
                raise ConfigError(
                    f"solver {name!r} is stochastic or adaptive; the tuner searches "
                    "deterministic fixed-step solvers"
                )
        for name in self.schedules:
            SCHEDULES[name]
        for name in self.tuned_schedules:
            if name not in TUNED_SCHEDULES:
                raise unknown_name("tuned schedule", name, TUNED_SCHEDULES)
        for name in self.extensions:
            EXTENSIONS[name]
        if not isinstance(self.max_nfe, int) or self.max_nfe < 1:
            raise ConfigError(f"max_nfe must be an integer >= 1, got {self.max_nfe!r}")
        if self.top_branches < 1:
            raise ConfigError(f"top_branches must be >= 1, got {self.top_branches}")


@dataclass(frozen=True)
class Extension:
    """A search dimension contributed by another area (e.g. compression).

    Attributes:
        install: ``install(denoiser, cfg)`` returns a context manager that applies ``cfg`` to
            the denoiser's network for the duration of a run (and restores it after).
        expand: ``expand(candidate)`` lists variants of a promising candidate carrying this
            dimension's configs in ``candidate.extensions[name]``.
    """

    install: Callable[[Any, Any], AbstractContextManager]
    expand: Callable[[Candidate], list[Candidate]]


#: Search dimensions other areas add (``diffspeed.compress`` registers ``"compress"`` here).
EXTENSIONS: Registry[Extension] = Registry("tune extension")


def register_extension(
    name: str,
    install: Callable[[Any, Any], AbstractContextManager],
    expand: Callable[[Candidate], list[Candidate]],
) -> None:
    """Add a dimension to the tuner's search space (see :class:`Extension`)."""
    EXTENSIONS.register(name)(Extension(install, expand))

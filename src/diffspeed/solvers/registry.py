"""The solver and schedule registries and the solver description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffspeed.registry import Registry


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver: the function and what a caller needs to know about it.

    Attributes:
        fn: ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options) -> x``.
        steps: the stepwise algorithm ``steps(x, sigmas, *, generator, callback, **options)``,
            a generator asking for one evaluation at a time (see
            :mod:`diffspeed.solvers.base`); ``None`` for a solver whose evaluation points
            depend on the sample (adaptive) or that batches several steps per call (parallel).
        order: its convergence order on the probability-flow ODE (0 for SDE / stochastic).
        stochastic: whether it injects noise (needs a generator for reproducibility).
        evals_per_step: network evaluations per step (for NFE <-> steps conversion).
        saves_last_eval: the step to sigma 0 costs one evaluation less (e.g. Heun's last step
            is Euler, so NFE = 2 * steps - 1).
        extra_evals: evaluations a run costs beyond that (PNDM's pseudo first step: 1).
    """

    fn: Callable
    order: int
    stochastic: bool = False
    evals_per_step: int = 1
    saves_last_eval: bool = False
    extra_evals: int = 0
    steps: Callable | None = None

    def nfe(self, steps: int) -> int:
        """Network evaluations of a run of ``steps`` steps ending at sigma 0."""
        return steps * self.evals_per_step - (1 if self.saves_last_eval else 0) + self.extra_evals

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest step count whose run costs at most ``nfe`` evaluations (>= 1)."""
        extra = (1 if self.saves_last_eval else 0) - self.extra_evals
        return max(1, (nfe + extra) // self.evals_per_step)


SOLVERS: Registry[SolverSpec] = Registry("solver")
SCHEDULES: Registry[Callable] = Registry("schedule")


def register_solver(
    name: str,
    *aliases: str,
    order: int,
    stochastic: bool = False,
    evals_per_step: int = 1,
    saves_last_eval: bool = False,
    extra_evals: int = 0,
    stepwise: bool = True,
) -> Callable[[Callable], Callable]:
    """Decorator: register a solver under ``name`` with its description.

    With ``stepwise`` (the default) the decorated function is the generator form (see
    :mod:`diffspeed.solvers.base`) and ``SOLVERS[name].fn`` is its functional form; otherwise
    it is a plain ``fn(denoiser, x, sigmas, ...)``. The function is returned unchanged.
    """
    from diffspeed.solvers.base import drive

    def deco(fn: Callable) -> Callable:
        steps, solve = (fn, drive(fn)) if stepwise else (None, fn)
        spec = SolverSpec(
            solve, order, stochastic, evals_per_step, saves_last_eval, extra_evals, steps
        )
        SOLVERS.register(name, *aliases)(spec)
        return fn

    return deco


def register_schedule(name: str, *aliases: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``schedule(denoiser, steps, **options) -> sigmas`` under ``name``."""
    return SCHEDULES.register(name, *aliases)

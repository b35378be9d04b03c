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
) -> Callable[[Callable], Callable]:
    """Decorator: register a solver function under ``name`` with its description."""

    def deco(fn: Callable) -> Callable:
        spec = SolverSpec(fn, order, stochastic, evals_per_step, saves_last_eval, extra_evals)
        SOLVERS.register(name, *aliases)(spec)
        return fn

    return deco


def register_schedule(name: str, *aliases: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``schedule(denoiser, steps, **options) -> sigmas`` under ``name``."""
    return SCHEDULES.register(name, *aliases)

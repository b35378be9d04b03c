"""Solvers (plain functions, one signature) and step schedules, registered by name."""

from diffspeed.solvers import (  # noqa: F401  (register solvers)
    adaptive,
    consistency,  # noqa: F401  (consistency / LCM samplers)
    multistep,
    ode,
    parallel,
    sde,
    singlestep,
)
from diffspeed.solvers.noise import NoiseSampler, seeded_noise
from diffspeed.solvers.registry import SCHEDULES, SOLVERS, register_schedule, register_solver
from diffspeed.solvers.sampling import available, sample

__all__ = [
    "SCHEDULES",
    "SOLVERS",
    "NoiseSampler",
    "available",
    "register_schedule",
    "register_solver",
    "sample",
    "seeded_noise",
]

"""diffspeed: make diffusion models generate fast, and see what each speedup costs.

The one contract is a denoiser ``D(x, sigma, **cond) -> x0_hat`` (VE convention). Adapters
(:func:`wrap`, :func:`from_diffusers`, ...) turn models into denoisers; :func:`sample` runs
any registered solver on any schedule.
"""

from diffspeed import tune as tune  # a callable module: diffspeed.tune(den, ...)
from diffspeed.cache import apply_cache
from diffspeed.core import (
    Denoiser,
    EDMDenoiser,
    VEDenoiser,
    from_diffusers,
    guidance,
    vp_continuous,
    wrap,
)
from diffspeed.distill import load_student, sample_student
from diffspeed.errors import DiffspeedError
from diffspeed.solvers import NoiseSampler, sample, seeded_noise
from diffspeed.solvers import schedules as schedules
from diffspeed.tune import apply

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "DiffspeedError",
    "EDMDenoiser",
    "NoiseSampler",
    "VEDenoiser",
    "__version__",
    "apply",
    "apply_cache",
    "from_diffusers",
    "guidance",
    "load_student",
    "sample",
    "sample_student",
    "schedules",
    "seeded_noise",
    "tune",
    "vp_continuous",
    "wrap",
]

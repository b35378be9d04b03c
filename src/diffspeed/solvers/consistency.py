"""Few-step samplers of consistency models: multistep consistency sampling and LCM's sampler.

Both alternate "jump to the data with the consistency function" and "re-noise to the next
noise level"; they run on any denoiser (on a plain diffusion model they are a crude sampler,
on a consistency / LCM student they are the intended one). The noise comes from the injected
``generator`` with one stream per sample, so a sample does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffspeed.errors import ConfigError
from diffspeed.solvers.base import Steps, report
from diffspeed.solvers.noise import as_noise_sampler
from diffspeed.solvers.registry import register_schedule, register_solver
from diffspeed.solvers.schedules import _append_zero, _discrete


def _noise_source(generator: Any, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample seeded noise from ``generator``; the global RNG only when none is given."""
    sampler = as_noise_sampler(generator, x.shape[0])
    return sampler if sampler is not None else torch.randn_like


def _renoise_loop(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Any,
    callback: Callable | None,
    noise_level: Callable[[torch.Tensor], torch.Tensor],
) -> Steps:
    noise = _noise_source(generator, x)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x, d = yield x, s  # jump to the trajectory's end
        # re-noise the estimate to the next level (the last step returns the estimate itself)
        x = d if s_next == 0 else d + noise_level(s_next).to(d.dtype) * noise(d)
        report(callback, i, x, d, s, s_next)
    return x


@register_solver("consistency", "multistep_consistency", order=1, stochastic=True)
def consistency(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
    sigma_min: float,
) -> Steps:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    ``x0 = f(x, sigma_0)``; then for each next level ``sigma_i``:
    ``x = x0 + sqrt(sigma_i^2 - sigma_min^2) z`` and ``x0 = f(x, sigma_i)``.
    One evaluation per step; one step is single-step generation. ``sigma_min`` is the model's
    (the drivers fill it in).
    """

    def level(s: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((s**2 - sigma_min**2).clamp_min(0))

    return (yield from _renoise_loop(x, sigmas, generator, callback, level))


@register_solver("lcm", order=1, stochastic=True)
def lcm(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Any = None,
    callback: Callable | None = None,
) -> Steps:
    """The LCM scheduler's sampling (Luo et al. 2023, Algorithm 3; diffusers ``LCMScheduler``).

    For each step: ``x0 = f(x, sigma_i)``; unless last, ``x_prev = sqrt(abar_prev) x0 +
    sqrt(1 - abar_prev) z``, which in the VE view is ``x = x0 + sigma_{i+1} z``. Use it with
    ``schedule="lcm"`` for diffusers' LCM timesteps.
    """

    def level(s: torch.Tensor) -> torch.Tensor:
        return s

    return (yield from _renoise_loop(x, sigmas, generator, callback, level))


@register_schedule("lcm")
def lcm_schedule(
    den: Any, steps: int, *, original_steps: int = 50, strength: float = 1.0
) -> torch.Tensor:
    """The LCM scheduler's timesteps (diffusers ``LCMScheduler.set_timesteps``).

    The distillation grid is ``t = k, 2k, ..., int(original_steps * strength) k`` minus 1 with
    ``k = T // original_steps``; ``steps`` timesteps are taken from it at (floored) evenly
    spaced indices from the top. ``strength < 1`` (diffusers' img2img knob) starts lower: from
    pure noise this treats the marginal at that level as Gaussian, which suits eps-predicting
    students whose ``x0`` estimate is ill-conditioned at the very top (``x0 = x - sigma eps``).
    Needs a discrete-time model (its sigmas are looked up at those timesteps).
    """
    T, d = _discrete(den, "lcm")
    top = int(original_steps * strength)
    if not (1 <= steps <= top and original_steps <= T and 0 < strength <= 1):
        raise ConfigError(
            f"the lcm schedule needs 1 <= steps <= original_steps * strength and "
            f"original_steps <= {T}, got steps={steps}, original_steps={original_steps}, "
            f"strength={strength}"
        )
    origin = (np.arange(1, top + 1) * (T // original_steps) - 1)[::-1]
    idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return _append_zero(d.t_to_sigma(torch.as_tensor(origin[idx].astype(np.float64))))

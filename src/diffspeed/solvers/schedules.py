"""Step schedules: functions ``schedule(denoiser, steps, **options) -> sigmas``.

Each returns a float64 ``[steps + 1]`` tensor, strictly decreasing, starting in the model's
range and ending with 0 (the solver's last step lands on the data). Any solver takes any
schedule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffspeed.errors import ConfigError, SigmaRangeError, UnsupportedModelError
from diffspeed.solvers.registry import SCHEDULES, register_schedule


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.double(), s.new_zeros(1, dtype=torch.float64)])


def _range(den: Any, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    lo = den.sigma_min if sigma_min is None else float(sigma_min)
    hi = den.sigma_max if sigma_max is None else float(sigma_max)
    return lo, hi


@register_schedule("karras")
def karras(den: Any, steps: int, *, rho: float = 7.0, sigma_min=None, sigma_max=None):
    """Karras et al. 2022 (EDM, eq. 5): uniform in ``sigma**(1/rho)``."""
    lo, hi = _range(den, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _append_zero(s)


@register_schedule("exponential", "logsnr")
def exponential(den: Any, steps: int, *, sigma_min=None, sigma_max=None):
    """Uniform in log-sigma, i.e. uniform in log-SNR (DPM-Solver's 'logSNR' spacing)."""
    lo, hi = _range(den, sigma_min, sigma_max)
    s = torch.linspace(math.log(hi), math.log(lo), steps, dtype=torch.float64).exp()
    return _append_zero(s)


@register_schedule("polyexponential")
def polyexponential(den: Any, steps: int, *, rho: float = 1.0, sigma_min=None, sigma_max=None):
    """Polynomial in log-sigma (k-diffusion's polyexponential; rho=1 is exponential)."""
    lo, hi = _range(den, sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    s = (ramp * (math.log(hi) - math.log(lo)) + math.log(lo)).exp()
    return _append_zero(s)


def _discrete(den: Any, name: str) -> tuple[int, Any]:
    if not hasattr(den, "t_to_sigma") or not hasattr(den, "num_train_timesteps"):
        inner = getattr(den, "inner", None)
        if inner is not None:
            return _discrete(inner, name)
        raise UnsupportedModelError(
            f"schedule {name!r} spaces discrete timesteps and needs a discrete-time VP model "
            "(diffspeed.wrap / from_diffusers); use 'karras' or 'exponential' for this model"
        )
    return den.num_train_timesteps, den


def _from_timesteps(den: Any, ts: np.ndarray) -> torch.Tensor:
    return _append_zero(den.t_to_sigma(torch.as_tensor(ts.astype(np.float64))))


@register_schedule("trailing")
def trailing(den: Any, steps: int):
    """diffusers 'trailing' spacing: ``round(arange(T, 0, -T/steps)) - 1`` (starts at T-1)."""
    T, d = _discrete(den, "trailing")
    ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return _from_timesteps(d, ts)


@register_schedule("leading")
def leading(den: Any, steps: int, *, steps_offset: int = 0):
    """diffusers 'leading' spacing: ``arange(steps) * (T // steps) + steps_offset``, reversed."""
    T, d = _discrete(den, "leading")
    ts = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64) + steps_offset
    return _from_timesteps(d, np.minimum(ts, T - 1))


@register_schedule("linspace", "uniform")
def linspace(den: Any, steps: int):
    """diffusers 'linspace' spacing: ``round(linspace(0, T-1, steps))``, reversed."""
    T, d = _discrete(den, "linspace")
    ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    return _from_timesteps(d, ts)


def default_schedule(den: Any) -> str:
    """'trailing' for discrete-time VP models, 'karras' otherwise."""
    try:
        _discrete(den, "trailing")
    except UnsupportedModelError:
        return "karras"
    return "trailing"


def available() -> list[str]:
    """Names of all registered schedules."""
    return SCHEDULES.names()


def check_sigmas(den: Any, sigmas: torch.Tensor) -> torch.Tensor:
    """Validate a schedule: 1-D, finite, strictly decreasing, inside the model's range."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise SigmaRangeError("a schedule needs at least 2 sigmas (one step)")
    if not torch.isfinite(s).all():
        raise SigmaRangeError("the schedule contains NaN or Inf")
    if not (s[1:] < s[:-1]).all():
        raise SigmaRangeError(f"sigmas must be strictly decreasing, got {s.tolist()[:8]}...")
    body = s[:-1] if s[-1] == 0 else s
    lo, hi = den.sigma_min * (1 - 1e-4), den.sigma_max * (1 + 1e-4)
    if float(body.min()) < lo or float(body.max()) > hi:
        raise SigmaRangeError(
            f"schedule spans [{float(body.min()):.6g}, {float(body.max()):.6g}], outside the "
            f"model's [{den.sigma_min:.6g}, {den.sigma_max:.6g}] (a trailing 0 is allowed)"
        )
    return s


def load_schedule(path: str | Path) -> torch.Tensor:
    """Read ``{"sigmas": [...]}`` written by ``diffspeed tune-schedule``."""
    try:
        data = json.loads(Path(path).read_text())
        return torch.tensor(data["sigmas"], dtype=torch.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a diffspeed schedule JSON ({e})") from None


def get_sigmas(
    den: Any, schedule: str | Path | torch.Tensor | None, steps: int | None, **options: Any
) -> torch.Tensor:
    """Resolve a schedule (name, JSON path, or explicit sigmas) to validated sigmas.

    Option ``final`` (for named schedules): ``"zero"`` (default) ends at sigma 0, the last
    step landing on the data prediction; ``"sigma_min"`` ends at the model's ``sigma_min``
    instead (no final denoising; diffusers' ``final_sigmas_type="sigma_min"``).
    """
    final = options.pop("final", "zero")
    if final not in ("zero", "sigma_min"):
        raise ConfigError(f"final must be 'zero' or 'sigma_min', got {final!r}")
    if isinstance(schedule, torch.Tensor | list | tuple):
        return check_sigmas(den, torch.as_tensor(schedule, dtype=torch.float64))
    if isinstance(schedule, Path) or (isinstance(schedule, str) and schedule.endswith(".json")):
        return check_sigmas(den, load_schedule(schedule))
    if steps is None or not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    fn = SCHEDULES[schedule or default_schedule(den)]
    try:
        sigmas = fn(den, steps, **options)
    except TypeError as e:
        raise ConfigError(f"schedule {schedule!r}: {e}") from None
    if final == "sigma_min" and float(sigmas[-1]) == 0:
        body = sigmas[:-1]
        if float(body[-1]) > den.sigma_min * (1 + 1e-6):
            body = torch.cat([body, body.new_tensor([den.sigma_min])])
        sigmas = body
    return check_sigmas(den, sigmas)

"""Step schedules: functions ``schedule(denoiser, steps, **options) -> sigmas``.

Each returns a float64 ``[steps + 1]`` tensor, strictly decreasing, starting in the model's
range and ending with 0 (the solver's last step lands on the data). Any solver takes any
schedule.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffspeed.errors import ConfigError, SigmaRangeError, UnsupportedModelError, did_you_mean
from diffspeed.solvers.registry import SCHEDULES, register_schedule

#: The most steps a schedule gives; more is certainly a mistake (days of sampling).
MAX_STEPS = 10_000


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.double(), s.new_zeros(1, dtype=torch.float64)])


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ConfigError(f"schedule option {name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"schedule option {name} must be finite, got {v}")
    return v


def _range(den: Any, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    lo = den.sigma_min if sigma_min is None else _number("sigma_min", sigma_min)
    hi = den.sigma_max if sigma_max is None else _number("sigma_max", sigma_max)
    if not 0 < lo < hi:
        raise SigmaRangeError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={lo:g}, sigma_max={hi:g}; the "
            f"model's range is [{den.sigma_min:.6g}, {den.sigma_max:.6g}]"
        )
    return lo, hi


def _rho(rho: Any) -> float:
    r = _number("rho", rho)
    if r <= 0:
        raise ConfigError(f"rho must be > 0, got {r:g} (7 is the EDM default; 1 is uniform)")
    return r


@register_schedule("karras")
def karras(den: Any, steps: int, *, rho: float = 7.0, sigma_min=None, sigma_max=None):
    """Karras et al. 2022 (EDM, eq. 5): uniform in ``sigma**(1/rho)``."""
    lo, hi = _range(den, sigma_min, sigma_max)
    rho = _rho(rho)
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
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** _rho(rho)
    s = (ramp * (math.log(hi) - math.log(lo)) + math.log(lo)).exp()
    return _append_zero(s)


def _discrete(den: Any, name: str, steps: int | None = None) -> tuple[int, Any]:
    if not hasattr(den, "t_to_sigma") or not hasattr(den, "num_train_timesteps"):
        inner = getattr(den, "inner", None)
        if inner is not None:
            return _discrete(inner, name, steps)
        raise UnsupportedModelError(
            f"schedule {name!r} spaces discrete timesteps and needs a discrete-time VP model "
            "(diffspeed.wrap / from_diffusers); use 'karras' or 'exponential' for this model"
        )
    T = den.num_train_timesteps
    if steps is not None and steps > T:
        raise ConfigError(
            f"schedule {name!r} picks {steps} of the model's {T} training timesteps; use at "
            f"most {T} steps, or 'karras'/'exponential' (continuous sigmas) for more"
        )
    return T, den


def _from_timesteps(den: Any, ts: np.ndarray) -> torch.Tensor:
    return _append_zero(den.t_to_sigma(torch.as_tensor(ts.astype(np.float64))))


@register_schedule("trailing")
def trailing(den: Any, steps: int):
    """diffusers 'trailing' spacing: ``round(arange(T, 0, -T/steps)) - 1`` (starts at T-1)."""
    T, d = _discrete(den, "trailing", steps)
    ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return _from_timesteps(d, ts)


@register_schedule("leading")
def leading(den: Any, steps: int, *, steps_offset: int = 0):
    """diffusers 'leading' spacing: ``arange(steps) * (T // steps) + steps_offset``, reversed."""
    T, d = _discrete(den, "leading", steps)
    ts = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64) + steps_offset
    return _from_timesteps(d, np.minimum(ts, T - 1))


@register_schedule("linspace", "uniform")
def linspace(den: Any, steps: int):
    """diffusers 'linspace' spacing: ``round(linspace(0, T-1, steps))``, reversed."""
    T, d = _discrete(den, "linspace", steps)
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
        raise SigmaRangeError("a schedule needs at least 2 sigmas (one step); give more sigmas")
    if not torch.isfinite(s).all():
        raise SigmaRangeError("the schedule contains NaN or Inf; give finite sigmas")
    if not (s[1:] < s[:-1]).all():
        raise SigmaRangeError(
            f"sigmas must be strictly decreasing, got {s.tolist()[:8]}...; pass them from the "
            "noisiest to the cleanest (a trailing 0 ends on the data)"
        )
    body = s[:-1] if s[-1] == 0 else s
    lo, hi = den.sigma_min * (1 - 1e-4), den.sigma_max * (1 + 1e-4)
    if float(body.min()) < lo or float(body.max()) > hi:
        raise SigmaRangeError(
            f"schedule spans [{float(body.min()):.6g}, {float(body.max()):.6g}], outside the "
            f"model's [{den.sigma_min:.6g}, {den.sigma_max:.6g}]; use sigmas inside that range "
            "(a trailing 0 is allowed)"
        )
    return s


def load_schedule(path: str | Path) -> torch.Tensor:
    """Read ``{"sigmas": [...]}`` written by ``diffspeed tune-schedule``."""
    try:
        data = json.loads(Path(path).read_text())
        return torch.tensor(data["sigmas"], dtype=torch.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path} is not a diffspeed schedule JSON ({e}); write one with `diffspeed "
            'tune-schedule` or as {"sigmas": [...]}, or give a schedule name'
        ) from None


def _keyword_options(fn: Any) -> set[str]:
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


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
        try:
            sigmas = torch.as_tensor(schedule, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                "explicit sigmas must be a list or 1-D tensor of numbers, decreasing, ending in 0"
            ) from None
        return check_sigmas(den, sigmas)
    if isinstance(schedule, Path) or (isinstance(schedule, str) and schedule.endswith(".json")):
        return check_sigmas(den, load_schedule(schedule))
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if schedule is not None and not isinstance(schedule, str):
        raise ConfigError(
            f"schedule must be a name, a .json path or sigmas, got {type(schedule).__name__}; "
            f"choose one of: {', '.join(SCHEDULES.names())}"
        )
    fn = SCHEDULES[schedule or default_schedule(den)]
    allowed = _keyword_options(fn)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"schedule {schedule or default_schedule(den)!r} has no option(s) {unknown}; it "
            f"accepts: {', '.join(sorted(allowed)) or 'no options'}"
            + "".join(did_you_mean(k, allowed) for k in unknown)
        )
    sigmas = fn(den, steps, **options)
    if final == "sigma_min" and float(sigmas[-1]) == 0:
        body = sigmas[:-1]
        if float(body[-1]) > den.sigma_min * (1 + 1e-6):
            body = torch.cat([body, body.new_tensor([den.sigma_min])])
        sigmas = body
    return check_sigmas(den, sigmas)

"""``diffspeed.sample``: noise -> data with any registered solver and schedule."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import check_inputs
from diffspeed.core.steps import StepContext, listeners_of
from diffspeed.errors import ConfigError, ShapeError, did_you_mean
from diffspeed.solvers.registry import SOLVERS
from diffspeed.solvers.schedules import get_sigmas


class _Stepper:
    """Hands the step context to the model's listeners before every network evaluation."""

    def __init__(self, denoiser: Any, listeners: list, total_steps: int, expected: int) -> None:
        self.denoiser, self.listeners = denoiser, listeners
        self.total_steps, self.expected, self.index = total_steps, expected, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.denoiser, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).max())
        ctx = StepContext(self.index, s, self.total_steps, self.expected)
        for listener in self.listeners:
            listener.set_step(ctx)
        self.index += 1
        return self.denoiser(x, sigma, **cond)


def _solver_options(fn: Callable) -> set[str]:
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


def sample(
    denoiser: Any,
    noise: torch.Tensor,
    solver: str = "ddim",
    steps: int | None = 50,
    schedule: str | Path | torch.Tensor | None = None,
    *,
    cond: dict[str, Any] | None = None,
    generator: Any = None,
    callback: Callable | None = None,
    schedule_options: dict[str, Any] | None = None,
    grad: bool = False,
    return_info: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Generate samples from unit Gaussian ``noise`` with a registered solver.

    Args:
        denoiser: any denoiser (``D(x, sigma, **cond) -> x0``), guided or not.
        noise: unit Gaussian noise ``[B, ...]``; it is scaled to the first sigma here
            (``sqrt(1 + sigma**2)`` for VP models, ``sigma`` for VE).
        solver: a name from ``diffspeed.solvers.available()``.
        steps: number of solver steps (ignored when ``schedule`` is explicit sigmas / JSON).
        schedule: a schedule name, a JSON file from ``diffspeed tune-schedule``, or sigmas.
        cond: conditioning passed to every evaluation, with the keys of the denoiser's
            ``cond_spec`` (e.g. a class label or text embeddings per sample).
        generator: randomness for stochastic solvers: a ``torch.Generator``, per-sample seeds
            or a :class:`~diffspeed.solvers.noise.NoiseSampler`.
        callback: called after each step with ``{"i", "x", "denoised", "sigma", "sigma_next"}``.
        schedule_options: keyword options of the schedule (e.g. ``{"rho": 7}``).
        grad: keep autograd on (distillation); by default sampling runs in inference mode.
        return_info: also return ``{"nfe", "steps", "sigmas", ...}`` (solvers may add keys,
            e.g. the parallel sampler's sequential ``rounds``).
        **options: solver options (e.g. ``order=3`` for UniPC), and for every solver
            ``time_shift`` (exposure-bias shift, see :func:`shifted_time`; 0 = off).

    Returns:
        ``x0`` samples ``[B, ...]`` (float32 or better), or ``(x0, info)``.
    """
    spec = SOLVERS[solver]
    time_shift = options.pop("time_shift", 0.0)
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim < 2:
        raise ShapeError(
            f"noise must be a floating-point tensor [B, ...], got {type(noise).__name__} "
            f"{tuple(getattr(noise, 'shape', ()))}"
        )
    check_inputs(denoiser, noise, cond)
    allowed = _solver_options(spec.fn) - {"cond", "generator", "callback", "info", "sigma_min"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"solver {solver!r} has no option(s) {unknown}"
            + "".join(did_you_mean(k, allowed) for k in unknown)
            + f"; it accepts: {', '.join(sorted(allowed)) or 'no options'}"
        )
    sigmas = get_sigmas(denoiser, schedule, steps, **(schedule_options or {}))
    n_steps = len(sigmas) - 1
    info: dict[str, Any] = {"steps": n_steps, "sigmas": sigmas.tolist()}
    if "info" in _solver_options(spec.fn):
        options["info"] = info
    listeners = listeners_of(getattr(denoiser, "model", None))
    den = _Stepper(denoiser, listeners, n_steps, spec.nfe(n_steps)) if listeners else denoiser
    if time_shift:
        den = shifted_time(den, time_shift)
    nfe0 = denoiser.nfe
    work = torch.promote_types(noise.dtype, torch.float32)
    with torch.inference_mode(not grad):
        x = noise.to(work) * denoiser.noise_scale(float(sigmas[0]))
        for listener in listeners:
            listener.start_run(n_steps)
        try:
            x = spec.fn(
                den, x, sigmas, cond=cond or {}, generator=generator, callback=callback, **options
            )
        finally:
            for listener in listeners:
                listener.end_run()
    # a solver that batches several steps per call (the parallel sampler) reports its own
    # per-sample NFE; otherwise it is the number of network calls
    info.setdefault("nfe", denoiser.nfe - nfe0)
    return (x, info) if return_info else x


def shifted_time(denoiser: Any, shift: float) -> Callable:
    """Exposure-bias correction by shifted time steps (after Li et al. 2023, "Alleviating
    exposure bias in diffusion models through sampling with shifted time steps").

    Sampled states carry more noise than forward-process states at the same step, so the
    network is queried at a slightly higher noise level: ``sigma * (1 + shift)``, clamped to
    the model's range. The solver's own coefficients keep the unshifted sigmas.
    """
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not -0.5 < shift < 0.5:
        raise ConfigError(f"time_shift must lie in (-0.5, 0.5), got {shift} (try 0.01-0.05)")

    def den(x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        s = (torch.as_tensor(sigma) * (1 + shift)).clamp(denoiser.sigma_min, denoiser.sigma_max)
        return denoiser(x, s, **cond)

    return den


def available() -> list[str]:
    """Names of all registered solvers."""
    return SOLVERS.names()

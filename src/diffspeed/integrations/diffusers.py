"""A diffusers scheduler that runs any diffspeed solver: ``pipe.scheduler = Scheduler(...)``.

A thin adapter over the functional solvers. The pipeline's loop calls ``step`` once per
network evaluation; each call replays the solver function from the start with the model
outputs recorded so far and stops it at the next evaluation it asks for (solver algebra is
replayed, the network never is). Stochastic solvers get per-sample seeds drawn once, so the
replay is exact.

The pipeline keeps samples in the VP scale of diffusers (``x_t = alpha_t x0 + sigma_t eps``),
so ``init_noise_sigma`` is 1 and ``scale_model_input`` is the identity, as for DDIM.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from diffspeed.errors import ConfigError

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
except ImportError as e:  # pragma: no cover - diffusers is a core dependency
    raise ImportError("diffspeed.integrations.diffusers needs `pip install diffusers`") from e


#: Solvers whose evaluation points are not fixed by the schedule (no step-by-step API).
_NOT_STEPWISE = ("adaptive", "dpm_solver_adaptive", "paradigms", "picard")


@dataclass
class SchedulerOutput:
    """What ``step`` returns (diffusers' field names)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _Pause(Exception):
    """Raised inside a replay when the solver asks for an evaluation not yet recorded."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x


class _Replay:
    """Denoiser stand-in: returns recorded outputs, pauses at the first unrecorded call."""

    def __init__(self, den: Any, outputs: list[torch.Tensor]) -> None:
        self.den, self.outputs, self.calls = den, outputs, 0
        self.sigma_min, self.sigma_max = den.sigma_min, den.sigma_max

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        if self.calls == len(self.outputs):
            raise _Pause(x)
        self.calls += 1
        return self.outputs[self.calls - 1]


class Scheduler(SchedulerMixin, ConfigMixin):
    """diffusers scheduler interface over a diffspeed solver and schedule.

    Args:
        solver: a name from ``diffspeed.solvers.available()`` (e.g. ``"dpmpp_2m"``).
        schedule: a schedule name, or None for diffspeed's default ("trailing").
        steps: default number of solver steps (``set_timesteps`` overrides it).
        solver_options: solver keyword options (e.g. ``{"order": 3}``).
        seed: base seed for stochastic solvers (per-sample seeds ``seed + i``; the pipeline's
            ``generator`` only draws the starting noise).
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        prediction_type: the model's training schedule (diffusers' meaning).
    """

    order = 1
    _compatibles: list[str] = []

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        schedule: str | None = None,
        steps: int = 20,
        solver_options: dict | None = None,
        seed: int = 0,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
    ) -> None:
        from diffusers import DDPMScheduler

        from diffspeed.core.adapters import DiscreteVPDenoiser
        from diffspeed.solvers.registry import SOLVERS

        if solver in _NOT_STEPWISE:
            raise ConfigError(
                f"solver {solver!r} chooses its evaluation points from the sample (adaptive) or "
                "batches several steps per call (parallel); use diffspeed.sample for it"
            )
        self.spec = SOLVERS[solver]
        ddpm = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
        )
        self.alphas_cumprod = ddpm.alphas_cumprod
        self.den = DiscreteVPDenoiser(lambda x, t: x, ddpm.alphas_cumprod, prediction_type)
        self.init_noise_sigma = 1.0
        self.set_timesteps(steps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Build the schedule and list the timestep of every network evaluation."""
        from diffspeed.solvers.schedules import get_sigmas

        self.sigmas = get_sigmas(self.den, self.config.schedule, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._outputs: list[torch.Tensor] = []
        self._x0: torch.Tensor | None = None
        self._seeds: list[int] | None = None
        # dry run on a 1-element state: the evaluation sigmas of a run do not depend on x
        probe = _SigmaProbe(self.den)
        self._run(probe, torch.zeros(1, 1, dtype=torch.float64), seeds=[0])
        self.eval_sigmas = torch.tensor(probe.sigmas, dtype=torch.float64)
        self.timesteps = self.den.sigma_to_t(self.eval_sigmas).float().to(device or "cpu")

    def _run(self, den: Any, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        opts = dict(self.config.solver_options or {})
        if "info" in inspect.signature(self.spec.fn).parameters:
            opts["info"] = {}
        return self.spec.fn(den, x, self.sigmas, cond={}, generator=seeds, callback=None, **opts)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the model sees the VP-scaled sample, as with DDIM."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Record the model output at this evaluation and advance to the next one."""
        k = len(self._outputs)
        if k >= len(self.eval_sigmas):
            raise ConfigError(
                "step() called more times than there are timesteps; call set_timesteps"
            )
        sigma = self.eval_sigmas[k]
        scale = torch.sqrt(1 + sigma**2)
        x = sample.double() * scale  # VP -> VE
        if k == 0:
            self._x0 = x
            self._seeds = [self.config.seed + i for i in range(x.shape[0])]
        s = sigma.expand(x.shape[0]).to(x.device)
        c_skip, c_out, _, _ = (c.to(x.device) for c in self.den.scalings(s))
        view = (-1,) + (1,) * (x.ndim - 1)
        d = c_skip.view(view) * x + c_out.view(view) * model_output.double()
        self._outputs.append(d)
        try:
            x_next = self._run(_Replay(self.den, self._outputs), self._x0, self._seeds)
            sigma_next = self.sigmas[-1]
        except _Pause as pause:
            x_next, sigma_next = pause.x, self.eval_sigmas[k + 1]
        prev = (x_next / torch.sqrt(1 + sigma_next**2)).to(sample.dtype)  # VE -> VP
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=d.to(sample.dtype))

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` at (possibly fractional) timesteps."""
        sigma = self.den.t_to_sigma(timesteps.double().cpu()).to(original.device)
        alpha = (1 / torch.sqrt(1 + sigma**2)).view(-1, *([1] * (original.ndim - 1)))
        return (alpha * original + alpha * sigma.view_as(alpha) * noise).to(original.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class _SigmaProbe:
    """Denoiser stand-in recording the sigma of every evaluation (returns zeros)."""

    def __init__(self, den: Any) -> None:
        self.sigma_min, self.sigma_max, self.sigmas = den.sigma_min, den.sigma_max, []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        self.sigmas.append(float(torch.as_tensor(sigma).flatten()[0]))
        return torch.zeros_like(x)

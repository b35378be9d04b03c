"""A diffusers scheduler that runs any stepwise diffspeed solver inside diffusers' pipelines.

The one way to build it is from the pipeline's own scheduler config, so the model's training
betas and prediction type carry over::

    pipe.scheduler = Scheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")

Each ``step(model_output, t, sample)`` advances the solver's generator (the stepwise form of
:mod:`diffspeed.solvers.base`) by exactly one network evaluation, at O(1) work, and hands it the
``sample`` the pipeline passed: img2img's noised start, inpainting's blend of known and generated
latents, or latents edited in ``callback_on_step_end`` all take effect. Multistep history lives in
the generator between calls.

The pipeline keeps samples in the VP scale of diffusers (``x_t = alpha_t x0 + sigma_t eps``),
so ``init_noise_sigma`` is 1 and ``scale_model_input`` is the identity, as for DDIM.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Any

import torch

from diffspeed.errors import ConfigError

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
except ImportError as e:  # pragma: no cover - diffusers is a core dependency
    raise ImportError("diffspeed.integrations.diffusers needs `pip install diffusers`") from e

#: Solvers whose ``lower_order_final`` applies only to runs of fewer than 15 steps (diffusers'
#: rule for DPM-Solver++ multistep and DEIS). Counted over the whole schedule, also when a
#: pipeline starts part-way (img2img), as diffusers does.
_SHORT_RUN_LOWERING = ("dpmpp_2m", "dpmpp_3m", "deis")

#: Set while ``Scheduler.from_config`` builds a scheduler: a config that leaves the betas out
#: means diffusers' defaults (what the pipeline's own scheduler used), not a forgotten argument.
_FROM_CONFIG = contextvars.ContextVar("diffspeed_scheduler_from_config", default=False)

#: A timestep this close to an integer is reported as that integer (discrete spacings).
_INTEGER_TOL = 1e-6


@dataclass
class SchedulerOutput:
    """What ``step`` returns (diffusers' field names)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class Scheduler(SchedulerMixin, ConfigMixin):
    """diffusers scheduler interface over a stepwise diffspeed solver and a schedule.

    Build it with ``Scheduler.from_config(pipe.scheduler.config, solver=..., ...)``: the betas,
    prediction type and timestep spacing then come from the pipeline's scheduler.

    Args:
        solver: a name from ``diffspeed.solvers.available()`` (e.g. ``"dpmpp_2m"``).
        schedule: a diffspeed schedule name; None takes ``timestep_spacing`` (diffusers' name)
            when the config has one, else diffspeed's default ("trailing").
        steps: default number of solver steps (``set_timesteps`` overrides it).
        solver_options: solver keyword options (e.g. ``{"order": 3}``).
        schedule_options: schedule keyword options (e.g. ``{"rho": 7}`` for "karras").
        seed: base seed of stochastic solvers when ``step`` gets no ``generator``
            (per-sample seeds ``seed + i``); the pipeline's generator is used when it passes one.
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
            prediction_type, timestep_spacing, steps_offset: the model's training schedule and
            spacing, with diffusers' meaning (read from the pipeline's config).
    """

    # built from any of diffusers' schedulers' configs; their own keys are dropped quietly
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        schedule: str | None = None,
        steps: int = 20,
        solver_options: dict | None = None,
        schedule_options: dict | None = None,
        seed: int = 0,
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        beta_schedule: str | None = None,
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str | None = None,
        steps_offset: int = 0,
    ) -> None:
        from diffusers import DDPMScheduler

        from diffspeed.core.adapters import DiscreteVPDenoiser
        from diffspeed.solvers.registry import SOLVERS

        betas_given = trained_betas is not None or None not in (beta_start, beta_end, beta_schedule)
        if not betas_given and not _FROM_CONFIG.get():
            raise ConfigError(
                "the Scheduler needs the model's training betas; build it from the pipeline's "
                "scheduler: Scheduler.from_config(pipe.scheduler.config, solver=...)"
            )
        self.spec = SOLVERS[solver]
        if self.spec.steps is None:
            raise ConfigError(
                f"solver {solver!r} chooses its evaluation points from the sample (adaptive) or "
                "batches several steps per call (parallel); use diffspeed.sample for it"
            )
        ddpm = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start if beta_start is not None else 0.0001,
            beta_end=beta_end if beta_end is not None else 0.02,
            beta_schedule=beta_schedule or "linear",
            trained_betas=trained_betas,
        )
        self.alphas_cumprod = ddpm.alphas_cumprod
        self.den = DiscreteVPDenoiser(lambda x, t: x, ddpm.alphas_cumprod, prediction_type)
        self.init_noise_sigma = 1.0
        self.order = self.spec.evals_per_step
        self._begin_index: int | None = None
        self.set_timesteps(steps)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Build from a diffusers scheduler config (``pipe.scheduler.config``); ``kwargs`` set
        diffspeed's own fields (``solver``, ``schedule``, ``solver_options``, ...)."""
        token = _FROM_CONFIG.set(True)
        try:
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        finally:
            _FROM_CONFIG.reset(token)

    # --- the schedule ------------------------------------------------------------------------
    def _schedule(self) -> tuple[Any, dict]:
        cfg = self.config
        options = dict(cfg.schedule_options or {})
        if cfg.schedule is not None:
            return cfg.schedule, options
        if cfg.timestep_spacing is None:
            return None, options
        if cfg.timestep_spacing == "leading":
            options.setdefault("steps_offset", cfg.steps_offset)
        return cfg.timestep_spacing, options

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, **_: Any
    ) -> None:
        """Build the schedule, list the timestep of every network evaluation, start afresh."""
        from diffspeed.solvers.schedules import get_sigmas

        schedule, options = self._schedule()
        self.sigmas = get_sigmas(self.den, schedule, num_inference_steps, **options)
        self.num_inference_steps = len(self.sigmas) - 1
        eval_sigmas, self._step_starts = self._probe()
        self.eval_sigmas = torch.tensor(eval_sigmas, dtype=torch.float64)
        t = self.den.sigma_to_t(self.eval_sigmas)
        t = torch.where((t - t.round()).abs() < _INTEGER_TOL, t.round(), t)
        self.timesteps = t.float().to(device or "cpu")
        # per evaluation: VP -> VE factor and the scalings turning a model output into D(x)
        c_skip, c_out, _, _ = self.den.scalings(self.eval_sigmas)
        scale = torch.sqrt(1 + self.eval_sigmas**2)
        self._coefficients = list(zip(scale.tolist(), c_skip.tolist(), c_out.tolist(), strict=True))
        self._run: Any = None
        self._step_index: int | None = None
        self._begin_index = None

    def _options(self) -> dict[str, Any]:
        opts = dict(self.config.solver_options or {})
        if any(self.spec is _spec(name) for name in _SHORT_RUN_LOWERING):
            full = len(self.sigmas) - 1
            opts["lower_order_final"] = opts.get("lower_order_final", True) and full < 15
        if "sigma_min" in _parameters(self.spec.steps):
            opts["sigma_min"] = self.den.sigma_min
        return opts

    def _probe(self) -> tuple[list[float], list[int]]:
        """Run the solver once on a 1-element state: the sigma of every evaluation, and the
        evaluation index at which each step starts (they do not depend on the sample)."""
        starts = [0]
        evals: list[float] = []

        def on_step(_: dict) -> None:
            starts.append(len(evals))

        run = self.spec.steps(
            torch.zeros(1, 1, dtype=torch.float64),
            self.sigmas,
            generator=[0],
            callback=on_step,
            **self._options(),
        )
        try:
            x, sigma = next(run)
            while True:
                evals.append(float(sigma))
                x, sigma = run.send((x, torch.zeros_like(x)))
        except StopIteration:
            pass
        return evals, starts[:-1]

    # --- diffusers' scheduler interface -------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """Index of the next evaluation (None before the first ``step``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The evaluation index the pipeline starts at (set by ``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at evaluation ``begin_index`` (img2img / inpainting strength)."""
        if begin_index not in self._step_starts:
            raise ConfigError(
                f"begin index {begin_index} is not the start of a solver step; steps start at "
                f"evaluations {self._step_starts[:8]}{'...' if len(self._step_starts) > 8 else ''}"
            )
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: the model sees the VP-scaled sample, as with DDIM."""
        return sample

    def _start(self, timestep: Any, x: torch.Tensor, generator: Any) -> None:
        if self._begin_index is None:
            t = float(torch.as_tensor(timestep).flatten()[0])
            hits = (self.timesteps.cpu().double() - t).abs() < 1e-3
            if not hits.any():
                raise ConfigError(
                    f"timestep {t:g} is not one of this scheduler's timesteps; call "
                    "set_timesteps(n) first (and set_begin_index for a part-way start)"
                )
            k = int(hits.nonzero()[0])
            if k not in self._step_starts:
                raise ConfigError(
                    f"timestep {t:g} is inside a solver step; call set_begin_index(k) with the "
                    "evaluation index the run starts at"
                )
            self._begin_index = k
        k = self._begin_index
        j = self._step_starts.index(k)
        if generator is None and self.spec.stochastic:
            generator = [self.config.seed + i for i in range(x.shape[0])]
        self._run = self.spec.steps(
            x, self.sigmas[j:], generator=generator, callback=None, **self._options()
        )
        next(self._run)
        self._step_index = k

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance the solver by one evaluation from ``sample`` (used as given).

        Args:
            model_output: the network's output at ``(sample, timestep)`` (eps / v / x0, as the
                config's ``prediction_type``).
            timestep: the current timestep (``self.timesteps[step_index]``).
            sample: the current latents, VP scale; edits to them since the last step count.
            generator: the pipeline's ``torch.Generator``; stochastic solvers draw from it.
        """
        if self._run is None and self._step_index is not None:
            raise ConfigError(
                "step() called more times than there are timesteps; call set_timesteps"
            )
        work = torch.promote_types(sample.dtype, torch.float32)
        if self._run is None:
            self._start(timestep, sample.to(work), generator)
        k = self._step_index
        scale, c_skip, c_out = self._coefficients[k]
        x = sample.to(work) * scale  # VP -> VE
        d = torch.add(x if c_skip == 1 else x * c_skip, model_output.to(work), alpha=c_out)
        try:
            x_next, sigma_next = self._run.send((x, d))
            sigma_next = float(sigma_next)
        except StopIteration as done:
            x_next, sigma_next = done.value, 0.0
            self._run = None
        self._step_index = k + 1
        if sigma_next:
            x_next = x_next * (1 / math.sqrt(1 + sigma_next**2))  # VE -> VP
        prev = x_next.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=d.to(sample.dtype))

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` at (possibly fractional) timesteps."""
        sigma = self.den.t_to_sigma(torch.as_tensor(timesteps).double().cpu()).flatten()
        sigma = sigma.to(original.device)
        alpha = (1 / torch.sqrt(1 + sigma**2)).view(-1, *([1] * (original.ndim - 1)))
        return (alpha * original + alpha * sigma.view_as(alpha) * noise).to(original.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _spec(name: str) -> Any:
    from diffspeed.solvers.registry import SOLVERS

    return SOLVERS[name]


def _parameters(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)

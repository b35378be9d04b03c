"""The hook system every cache method is built on: configs, install, step context, remove.

A cache is installed with :func:`apply_cache` and returns a :class:`CacheHandle`:

* it wraps the ``forward`` of the sub-modules its method needs (an instance attribute that
  shadows the class method) and adds one forward pre-hook on the top module;
  :meth:`CacheHandle.remove` deletes exactly those, so the model comes back bit-identical
  (same ``state_dict``, same attributes, class ``forward`` methods);
* it is a step listener (:mod:`diffspeed.core.steps`): ``diffspeed.sample`` calls
  ``start_run(total_steps)``, ``set_step(ctx)`` before every network evaluation and
  ``end_run()``; per-run state (cached features, history) is reset at both ends of a run;
* installed on a diffusers pipeline (``apply_cache(pipe, config)``), the handle follows the
  pipeline's scheduler: every pipeline call sets its timesteps, which starts a new run with
  the run's number of evaluations (exact run boundaries, also for schedulers that evaluate
  twice at one timestep);
* installed on a bare network and called without ``diffspeed.sample`` (your own loop, or a
  pipeline's ``unet``), the handle infers the step from the calls to the top-level forward:
  each call is the next evaluation, and a call whose ``timestep`` does not decrease starts a
  new run (denoising always goes from high to low noise, so two separate one-step calls never
  share features; a second-order scheduler's repeated timestep then computes in full). Call
  :meth:`CacheHandle.start_run` yourself to give the total number of steps (the non-uniform
  DeepCache schedule needs it).

Data-dependent decisions (first-block and TeaCache thresholds, condition equality, reading the
timestep) run in functions decorated with ``torch.compiler.disable`` (through
:func:`compiler_disabled`): under ``torch.compile`` they become graph breaks executed eagerly,
and the compiled graphs hold only tensor math.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from diffspeed.configs import dataclass_from_dict
from diffspeed.core.contract import network_of
from diffspeed.core.steps import StepContext, attach_listener, detach_listener
from diffspeed.errors import ConfigError, UnsupportedModelError
from diffspeed.registry import Registry

log = logging.getLogger("diffspeed")

#: Cache method name -> config class (filled by :func:`register_cache`).
CACHES: Registry[type[CacheConfig]] = Registry("cache method")


def register_cache(name: str, *aliases: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`CacheConfig` subclass under ``name``."""

    def deco(cls: type) -> type:
        cls.method = name
        return CACHES.register(name, *aliases)(cls)

    return deco


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """Base of the cache configs: small frozen dataclasses that round-trip JSON.

    Subclasses set ``families`` (the model families they support: ``"unet"`` and/or
    ``"transformer"``), validate their fields in :meth:`validate` and build the per-model
    runtime in :meth:`build`.
    """

    method: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an out-of-range field."""

    def build(self, model: nn.Module, adapter: Any) -> CacheRuntime:
        """The runtime (installed wrappers and per-run state) of this method on ``model``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, **fields}`` (JSON-serialisable; tuples become lists)."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict())


def config_from_dict(data: dict[str, Any] | str) -> CacheConfig:
    """Build a cache config from ``{"method": "deepcache", "interval": 3, ...}`` (or its JSON).

    Raises:
        ConfigError: unknown method or field, or an out-of-range value.
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise ConfigError(
                f'cache config is not valid JSON ({e}); write it like {{"method": "deepcache", '
                '"interval": 3}'
            ) from None
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError('a cache config dict needs a "method" key, e.g. {"method": "deepcache"}')
    fields = dict(data)
    cls = CACHES[fields.pop("method")]
    return dataclass_from_dict(cls, fields, f"cache method {cls.method!r}")


def check_interval(name: str, value: Any) -> None:
    """Refuse an interval that is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (1 = no caching), got {value!r}")


def check_threshold(name: str, value: Any) -> None:
    """Refuse a threshold that is negative or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{name} must be a number >= 0 (0 = no caching), got {value!r}")
    if value == float("inf"):
        raise ConfigError(f"{name} must be finite, got {value!r}")


# --- forward wrapping ----------------------------------------------------------------------


def wrap_method(
    obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Callable[[], None]:
    """Shadow the method ``obj.name`` with ``make(original)``; return the undo function.

    The wrapper is an instance attribute; undoing deletes it (or restores a previous instance
    attribute, e.g. one installed by another tool), so nothing is left behind.
    """
    had = name in obj.__dict__
    previous = obj.__dict__.get(name)
    wrapper = make(getattr(obj, name))
    setattr(obj, name, wrapper)

    def undo() -> None:
        if obj.__dict__.get(name) is not wrapper:
            raise ConfigError(
                f"the {name} of {type(obj).__name__} was replaced after the cache was "
                "installed; remove caches (and other wrappers) in reverse order"
            )
        if had:
            setattr(obj, name, previous)
        else:
            del obj.__dict__[name]

    return undo


def compiler_disabled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable(fn)``, applied at the first call: importing torch's compiler
    stack costs about a second, which ``import diffspeed`` should not pay."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


def wrap_forward(
    module: nn.Module, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Callable[[], None]:
    """Shadow ``module.forward`` with ``make(original_forward)``; see :func:`wrap_method`."""
    return wrap_method(module, "forward", make)


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L1 change ``mean|a - b| / mean|b|`` (the TeaCache / first-block metric)."""
    a, b = a.detach().float(), b.detach().float()  # a metric: no graph, no grad warning
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


class CacheRuntime:
    """What one method keeps on one model: installed wrappers and per-run state.

    Subclasses install wrappers in ``__init__`` through :meth:`wrap` and implement
    :meth:`reset` (clear per-run state) and :meth:`begin_eval` (decide for one evaluation).
    ``evals`` / ``full`` count evaluations and the ones computed without reuse.
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.evals = 0
        self.full = 0

    def wrap(
        self, module: nn.Module, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Install a forward wrapper that :meth:`uninstall` removes."""
        self._undo.append(wrap_forward(module, make))

    def uninstall(self) -> None:
        """Remove every wrapper, newest first."""
        while self._undo:
            self._undo.pop()()

    def reset(self) -> None:
        """Forget all per-run state (cached features, history, counters of the run)."""

    def begin_eval(self, ctx: StepContext) -> None:
        """Called before every network evaluation with its step context."""


# --- the handle ---------------------------------------------------------------------------


class CacheHandle:
    """An installed cache: a step listener, removable, usable as a context manager.

    Attributes:
        model: the module the cache is installed on.
        config: the :class:`CacheConfig`.
        adapter: the model-family adapter that named the cached modules.
        runtime: the method's runtime (``runtime.evals`` / ``runtime.full`` count evaluations).
    """

    def __init__(self, model: nn.Module, config: CacheConfig, adapter: Any) -> None:
        self.model, self.config, self.adapter = model, config, adapter
        self.runtime = config.build(model, adapter)
        self._pending: StepContext | None = None
        self._total = 0
        self._expected = 0
        self._index = -1
        self._last_t: float | None = None
        self._sampler_run = False
        self._scheduled = False
        self._undo_scheduler: Callable[[], None] | None = None
        self._timestep_pos = adapter.timestep_pos
        self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        attach_listener(model, self)
        self.installed = True

    # --- step listener (called by diffspeed.sample) ----------------------------------------
    def start_run(self, total_steps: int, expected_evals: int = 0) -> None:
        """Start a sampling run of ``total_steps`` steps: reset all per-run state."""
        self._total, self._expected = int(total_steps), int(expected_evals)
        self._pending, self._index, self._last_t = None, -1, None
        self._sampler_run = True
        self.runtime.reset()

    def set_step(self, ctx: StepContext) -> None:
        """The context of the next network evaluation (index counts evaluations)."""
        self._pending = ctx

    def end_run(self) -> None:
        """End the run: drop cached features (frees memory; the next run starts clean)."""
        self._sampler_run = False
        self._pending, self._index, self._last_t = None, -1, None
        self._total = self._expected = 0
        self.runtime.reset()

    # --- a pipeline's scheduler ------------------------------------------------------------
    def follow_scheduler(self, scheduler: Any) -> None:
        """Start a new run whenever ``scheduler.set_timesteps`` runs (every pipeline call).

        The run's evaluations are the scheduler's timesteps; undone by :meth:`remove`.
        """
        if self._undo_scheduler is not None:
            raise ConfigError("this cache already follows a scheduler")

        def make(orig: Callable[..., Any]) -> Callable[..., Any]:
            def set_timesteps(*args: Any, **kwargs: Any) -> Any:
                out = orig(*args, **kwargs)
                evals = len(scheduler.timesteps)
                steps = getattr(scheduler, "num_inference_steps", None) or evals
                self.start_run(int(steps), evals)
                self._sampler_run, self._scheduled = False, True
                return out

            return set_timesteps

        self._undo_scheduler = wrap_method(scheduler, "set_timesteps", make)

    # --- inferred steps (no sampler) -------------------------------------------------------
    @compiler_disabled
    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx, self._pending = self._pending, None
        if ctx is None:
            t = kwargs.get("timestep")
            if t is None and len(args) > self._timestep_pos:
                t = args[self._timestep_pos]
            t = float(torch.as_tensor(t).max()) if t is not None else None
            inferred = not (self._sampler_run or self._scheduled)
            if inferred and t is not None and self._last_t is not None and t >= self._last_t:
                log.debug("cache: timestep did not decrease (%s -> %s): a new run", self._last_t, t)
                self._index, self._total, self._expected = -1, 0, 0
                self.runtime.reset()
            self._last_t = t
            ctx = StepContext(self._index + 1, t or 0.0, self._total, self._expected)
        self._index = ctx.index
        self.runtime.evals += 1
        self.runtime.begin_eval(ctx)

    # --- removal ---------------------------------------------------------------------------
    def remove(self) -> None:
        """Uninstall: the model comes back bit-identical (idempotent)."""
        if not self.installed:
            return
        self.runtime.uninstall()
        self.runtime.reset()
        if self._undo_scheduler is not None:
            self._undo_scheduler()
            self._undo_scheduler = None
        self._hook.remove()
        detach_listener(self.model, self)
        self.installed = False

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def stats(self) -> dict[str, int]:
        """``{"evals", "full"}``: evaluations seen and evaluations computed in full."""
        return {"evals": self.runtime.evals, "full": self.runtime.full}

    def __repr__(self) -> str:
        state = "installed" if self.installed else "removed"
        return f"CacheHandle({self.config!r} on {type(self.model).__name__}, {state})"


def resolve_module(model: Any) -> nn.Module:
    """The ``nn.Module`` to cache: ``model`` itself or a denoiser's ``.model``."""
    if hasattr(model, "_orig_mod"):
        raise ConfigError(
            "apply_cache got a torch.compile'd module; apply the cache first, then compile"
        )
    from diffspeed.cache.adapters import find_adapter

    if isinstance(model, nn.Module) and find_adapter(model) is not None:
        return model
    inner = network_of(model)
    if isinstance(inner, nn.Module) and inner is not model:
        return resolve_module(inner)
    if isinstance(model, nn.Module):
        return model
    raise UnsupportedModelError(
        f"apply_cache needs a torch module or a diffspeed denoiser, got {type(model).__name__}"
    )


def _pipeline_network(model: Any) -> nn.Module | None:
    """The denoising network of a diffusers pipeline (None when ``model`` is none)."""
    if not (hasattr(model, "components") and hasattr(model, "scheduler")):
        return None
    net = getattr(model, "unet", None) or getattr(model, "transformer", None)
    return net if isinstance(net, nn.Module) else None


def apply_cache(model: Any, config: CacheConfig | dict[str, Any]) -> CacheHandle:
    """Install a feature cache on ``model`` and return its removable :class:`CacheHandle`.

    Args:
        model: a supported diffusers model (``UNet2DModel``, ``UNet2DConditionModel``,
            ``DiTTransformer2DModel``, ``PixArtTransformer2DModel``, ``SD3Transformer2DModel``,
            ``FluxTransformer2DModel``), a diffspeed denoiser wrapping one (its ``.model``),
            or a diffusers pipeline holding one (``pipe.unet`` / ``pipe.transformer``; the
            cache then starts afresh at every pipeline call, see
            :meth:`CacheHandle.follow_scheduler`).
        config: a cache config (``DeepCache(interval=3)``, ``FORA(...)``, ...) or its dict.

    Raises:
        UnsupportedModelError: the method does not support this model (the message lists the
            models it supports).
        ConfigError: a bad config (e.g. interval < 1, negative threshold, branch out of range).
    """
    from diffspeed.cache.adapters import adapter_for

    if isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, CacheConfig):
        raise ConfigError(
            f"apply_cache needs a cache config (e.g. diffspeed.cache.DeepCache(interval=3)), "
            f"got {type(config).__name__}; known methods: {', '.join(CACHES.names())}"
        )
    network = _pipeline_network(model)
    pipeline = model if network is not None else None
    module = resolve_module(network if network is not None else model)
    handle = CacheHandle(module, config, adapter_for(module, config))
    if pipeline is not None:
        handle.follow_scheduler(pipeline.scheduler)
    return handle

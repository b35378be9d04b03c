"""Activation ranges for static int8 activations (``w8a8``), and the layer sensitivity scan.

Timestep-aware calibration (PTQ4DM, Q-Diffusion): the ranges of every linear / convolution
input are collected while ``diffspeed.sample`` runs the *sampler's own* trajectories on
calibration seeds, so every noise level the sampler visits is covered with the inputs it really
produces. With ``act_groups > 1`` each group of noise levels (equal numbers of evaluations per
group, split at the geometric mean of neighbouring sigmas) gets its own range (TFMQ-DM, PTQD).

The naive baseline, :func:`calibrate_forward`, takes the ranges from the forward process
(``x0 + sigma * noise`` on data at log-uniform sigmas) instead.

Calibration seeds start at :data:`CALIBRATION_SEED_BASE`, far from every report set's seeds
(``seed * 1_000_003 + i``); :func:`calibrate` refuses seeds that overlap ``exclude_seeds``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diffspeed.compress.quantize import (
    MIN_CALIBRATION_SAMPLES,
    QuantHandle,
    Quantize,
    fake_layer,
    quantizable_layers,
    resolve_network,
)
from diffspeed.core.steps import StepContext, attach_listener, detach_listener
from diffspeed.errors import ConfigError

log = logging.getLogger("diffspeed")

#: First calibration seed (sample ``i`` uses ``CALIBRATION_SEED_BASE + i``).
CALIBRATION_SEED_BASE = 10**12


@dataclass
class Calibration:
    """Activation ranges per layer and per group of noise levels.

    Attributes:
        source: ``"trajectory"`` or ``"forward"``.
        edges: ascending sigma boundaries between groups (``len = groups - 1``).
        ranges: ``{layer: [groups, 2]}`` min and max of the layer's input per group.
        seeds: the noise seeds the calibration saw (one per sample).
        keep: layers the sensitivity scan chose to keep in full precision.
    """

    source: str
    edges: list[float]
    ranges: dict[str, torch.Tensor]
    seeds: list[int]
    keep: tuple[str, ...] = ()
    sensitivity: dict[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        """Number of calibration samples."""
        return len(self.seeds)

    def check(self, needed: int = MIN_CALIBRATION_SAMPLES) -> None:
        """Refuse a calibration of fewer than ``needed`` samples."""
        if self.samples < needed:
            raise ConfigError(
                f"calibration has {self.samples} samples; at least {needed} are needed"
            )

    def ranges_of(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``([groups, 2], [2])``: a layer's per-group ranges and the range over all groups."""
        if layer not in self.ranges:
            raise ConfigError(f"the calibration has no range for layer {layer!r}")
        r = self.ranges[layer]
        return r, torch.stack([r[:, 0].min(), r[:, 1].max()])


class _Collector:
    """Forward pre-hooks recording each layer's input min/max per evaluation's sigma; a step
    listener, so ``diffspeed.sample`` hands it every evaluation's sigma."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.sigma: float | None = None
        self.stats: dict[float, dict[str, torch.Tensor]] = {}
        self.hooks = [
            mod.register_forward_pre_hook(self._hook(name)) for name, mod in quantizable_layers(net)
        ]
        attach_listener(net, self)

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            if self.sigma is None:
                raise ConfigError("calibration saw a network call without a sigma")
            x = args[0].detach().float()
            new = torch.stack([x.min(), x.max()]).cpu()
            per = self.stats.setdefault(self.sigma, {})
            old = per.get(name)
            if old is not None:
                new = torch.stack([torch.minimum(old[0], new[0]), torch.maximum(old[1], new[1])])
            per[name] = new

        return hook

    def start_run(self, total_steps: int, expected_evals: int = 0) -> None:
        self.sigma = None

    def set_step(self, ctx: StepContext) -> None:
        self.sigma = round(float(ctx.sigma), 6)

    def end_run(self) -> None:
        self.sigma = None

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        detach_listener(self.net, self)

    def result(self, groups: int) -> tuple[list[float], dict[str, torch.Tensor]]:
        """Group the sigmas (equal counts, ascending) and reduce the ranges per group."""
        sigmas = sorted(self.stats)
        groups = max(1, min(groups, len(sigmas)))
        chunks = [
            sigmas[round(i * len(sigmas) / groups) : round((i + 1) * len(sigmas) / groups)]
            for i in range(groups)
        ]
        edges = [
            math.sqrt(max(a[-1], 1e-12) * b[0]) for a, b in zip(chunks, chunks[1:], strict=False)
        ]
        ranges: dict[str, torch.Tensor] = {}
        for name in self.stats[sigmas[0]]:
            rows = []
            for chunk in chunks:
                lo = min(float(self.stats[s][name][0]) for s in chunk if name in self.stats[s])
                hi = max(float(self.stats[s][name][1]) for s in chunk if name in self.stats[s])
                rows.append([lo, hi])
            ranges[name] = torch.tensor(rows, dtype=torch.float32)
        return edges, ranges


def calibration_seeds(n: int, base: int = CALIBRATION_SEED_BASE) -> list[int]:
    """The default calibration seeds (``base + i``), disjoint from every report set's."""
    return [base + i for i in range(n)]


def _check_seeds(seeds: Sequence[int], needed: int, exclude: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if len(seeds) < needed:
        raise ConfigError(f"calibration needs at least {needed} samples (seeds), got {len(seeds)}")
    overlap = sorted(set(seeds) & {int(s) for s in exclude})
    if overlap:
        raise ConfigError(
            f"calibration seeds overlap the report set's seeds ({overlap[:5]}...); use "
            "diffspeed.compress.calibration_seeds(n), which never does"
        )
    return seeds


def _default_exclude() -> list[int]:
    from diffspeed.eval.reference import ReferenceSpec

    return ReferenceSpec(n=10_000).seeds()


def calibrate(
    denoiser: Any,
    config: Quantize,
    *,
    solver: str = "ddim",
    steps: int = 20,
    schedule: str | None = None,
    seeds: Sequence[int] | None = None,
    cond: Mapping[str, Any] | None = None,
    sample_shape: Sequence[int] | None = None,
    batch_size: int = 64,
    exclude_seeds: Sequence[int] | None = None,
    **options: Any,
) -> Calibration:
    """Timestep-aware calibration: activation ranges from the sampler's own trajectories.

    Args:
        denoiser: the denoiser exactly as it will be sampled (guided, if guidance is used).
        config: the :class:`Quantize` recipe (``act_groups``, ``calib_samples``,
            ``keep_sensitive``).
        solver, steps, schedule, options: the sampler whose trajectories are calibrated on.
        seeds: noise seeds (default: ``calibration_seeds(config.calib_samples)``).
        cond: one condition per seed (default: the model's example conditions).
        sample_shape: ``(C, H, W)`` when the model's spec does not say it.
        batch_size: samples per sampling call.
        exclude_seeds: seeds that must not be used (default: the first 10 000 report seeds of
            reference seed 0, i.e. every default report set).

    Raises:
        ConfigError: fewer than ``MIN_CALIBRATION_SAMPLES`` seeds (the message says how many
            are needed), or seeds that overlap ``exclude_seeds``.
    """
    from diffspeed.solvers import sample, seeded_noise

    n = config.calib_samples
    seeds = _check_seeds(
        calibration_seeds(n) if seeds is None else seeds,
        MIN_CALIBRATION_SAMPLES,
        _default_exclude() if exclude_seeds is None else exclude_seeds,
    )
    spec = denoiser.cond_spec
    shape = tuple(sample_shape or spec.sample_shape or ())
    if not shape:
        raise ConfigError("calibrate needs sample_shape=(C, H, W): the model does not say it")
    cond = dict(spec.example_cond(len(seeds)) if cond is None else cond)
    net = resolve_network(denoiser)
    device = getattr(denoiser, "device", torch.device("cpu"))
    noise = seeded_noise(seeds, shape)
    collector = _Collector(net)
    states: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
    recorder = _Recorder(denoiser, states, limit=16)
    try:
        for i in range(0, len(seeds), batch_size):
            sl = slice(i, i + batch_size)
            c = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in spec.select(cond, sl).items()
            }
            recorder.active = i == 0
            sample(recorder, noise[sl].to(device), solver, steps, schedule, cond=c, **options)
    finally:
        collector.close()
    edges, ranges = collector.result(config.act_groups)
    calib = Calibration("trajectory", edges, ranges, seeds)
    if config.keep_sensitive:
        calib.sensitivity = sensitivity(denoiser, calib, config, states)
        ranked = sorted(calib.sensitivity, key=calib.sensitivity.get, reverse=True)
        calib.keep = tuple(ranked[: config.keep_sensitive])
    return calib


class _Recorder:
    """A denoiser wrapper that keeps the inputs of the first ``limit`` samples of a batch."""

    def __init__(self, denoiser: Any, states: list, limit: int) -> None:
        self.inner_den, self.states, self.limit, self.active = denoiser, states, limit, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner_den, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        if self.active:
            k = self.limit
            c = {
                key: v[:k] if isinstance(v, torch.Tensor) and v.ndim else v
                for key, v in cond.items()
            }
            s = torch.as_tensor(sigma)
            self.states.append((x[:k].clone(), (s[:k] if s.ndim else s).clone(), c))
        return self.inner_den(x, sigma, **cond)


def calibrate_forward(
    denoiser: Any,
    config: Quantize,
    x0: torch.Tensor,
    cond: Mapping[str, Any] | None = None,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int = 64,
) -> Calibration:
    """Naive calibration from the forward process: ``x = x0 + sigma * noise`` at log-uniform
    sigmas in the model's range, one denoiser call per sample (PTQ4DM's strawman).

    Args:
        denoiser: the (unguided) denoiser.
        config: the :class:`Quantize` recipe (``act_groups``, ``calib_samples``).
        x0: data ``[N, C, H, W]`` (N >= ``config.calib_samples``; the first ones are used).
        cond: their conditions (``{key: [N, ...]}``).
        seeds: one seed per sample for its noise and sigma (default: calibration seeds).
    """
    n = config.calib_samples
    seeds = _check_seeds(
        calibration_seeds(n) if seeds is None else seeds, MIN_CALIBRATION_SAMPLES, []
    )
    if x0.shape[0] < len(seeds):
        raise ConfigError(
            f"forward calibration needs {len(seeds)} data samples (one per seed), got {x0.shape[0]}"
        )
    net = resolve_network(denoiser)
    device = getattr(denoiser, "device", torch.device("cpu"))
    lo, hi = math.log(denoiser.sigma_min), math.log(denoiser.sigma_max)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    sig = torch.exp(lo + (hi - lo) * u)
    collector = _Collector(net)
    try:
        with torch.inference_mode():
            for i in range(len(seeds)):
                s = sig[i : i + 1]
                collector.set_step(StepContext(i, float(s), 1))
                x = (x0[i : i + 1].double() + s.view(-1, 1, 1, 1) * noise[i : i + 1]).float()
                c = {
                    k: v[i : i + 1].to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in (cond or {}).items()
                }
                denoiser(x.to(device), s.to(device), **c)
    finally:
        collector.close()
    edges, ranges = collector.result(config.act_groups)
    return Calibration("forward", edges, ranges, seeds)


def sensitivity(
    denoiser: Any,
    calibration: Calibration,
    config: Quantize,
    states: Sequence[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]],
) -> dict[str, float]:
    """Measured sensitivity of each layer: the mean squared change of the denoiser's output
    on recorded sampler states when only that layer is fake-quantized (``config.format``).

    Each layer is swapped for a quantized copy, one at a time, and swapped back.
    Returns ``{layer: mse}`` (higher = more sensitive)."""
    if not states:
        raise ConfigError("the sensitivity scan needs recorded sampler states")
    net = resolve_network(denoiser)
    single = dataclasses.replace(config, backend="fake", keep=(), keep_sensitive=0)
    handle = QuantHandle(net, single, calibration)

    def outputs() -> list[torch.Tensor]:
        out = []
        with torch.inference_mode():
            for x, s, c in states:
                handle.set_step(StepContext(0, float(torch.as_tensor(s).max()), 1))
                out.append(denoiser(x, s, **c).float())
        return out

    ref = outputs()
    scores: dict[str, float] = {}
    for name, mod in list(quantizable_layers(net)):
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        twin = copy.deepcopy(mod)
        fake_layer(handle, name, twin, calibration)
        setattr(parent, child, twin)
        try:
            out = outputs()
        finally:
            setattr(parent, child, mod)
        err = sum(((a - b) ** 2).mean() for a, b in zip(out, ref, strict=True))
        scores[name] = float(err) / len(ref)
    return scores

"""TeaCache (Liu et al. 2025, "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model").

The first block's timestep-modulated input ``m_t`` (adaLN output) is cheap to compute and its
change tracks the change of the model output. Each evaluation adds the rescaled relative L1
change ``max(0, poly(|m_t - m_prev| / |m_prev|))`` to an accumulator; while the accumulator
stays below ``threshold`` the whole block stack is skipped and its cached residual reused,
otherwise it runs and the accumulator restarts at 0. The first evaluation of a run and (when
the sampler says how many there are) the last one always run in full.

The rescaling polynomial maps the input change to the output change. It is not hand-made:
:func:`diffspeed.cache.calibrate` (or :func:`fit_coefficients`) fits it by least squares on a
calibration run of the user's model; ``coefficients=None`` uses the raw change (identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from diffspeed.cache.blocks import BlockCacheRuntime, Stream
from diffspeed.cache.hooks import CacheConfig, check_threshold, register_cache, rel_l1
from diffspeed.errors import ConfigError, UnsupportedModelError

#: Degree of the fitted rescaling polynomial.
POLY_DEGREE = 2


@register_cache("teacache")
@dataclass(frozen=True)
class TeaCache(CacheConfig):
    """Accumulated modulated-input change decides when to recompute the block stack.

    Attributes:
        threshold: recompute once the accumulated rescaled change reaches this (0 = always).
        coefficients: rescaling polynomial, highest degree first (``numpy.polyval`` order);
            None = identity. Fit it with :func:`diffspeed.cache.calibrate`.
    """

    threshold: float = 0.1
    coefficients: tuple[float, ...] | None = None

    families = ("transformer",)

    def validate(self) -> None:
        check_threshold("TeaCache threshold", self.threshold)
        if self.coefficients is not None:
            c = tuple(float(v) for v in self.coefficients)
            if not c or not all(np.isfinite(c)):
                raise ConfigError("TeaCache coefficients must be a non-empty list of finite floats")
            object.__setattr__(self, "coefficients", c)

    def build(self, model: nn.Module, adapter: Any) -> TeaCacheRuntime:
        if adapter.modulated_input is None:
            raise UnsupportedModelError(
                f"TeaCache has no modulated-input rule for {adapter.class_name}"
            )
        return TeaCacheRuntime(self, model, adapter)


class TeaCacheRuntime(BlockCacheRuntime):
    """Accumulate the rescaled change of block 0's modulated input (eager decision).

    ``trace`` (a list, when set) receives ``(input change, residual change)`` pairs of
    consecutive full evaluations; calibration fits the polynomial on them.
    """

    trace: list[tuple[float, float]] | None = None

    def reset(self) -> None:
        super().reset()
        self.prev_mod: torch.Tensor | None = None
        self.acc = 0.0
        self.last_change: float | None = None

    def rescale(self, change: float) -> float:
        c = self.config.coefficients
        return change if c is None else max(0.0, float(np.polyval(c, change)))

    def skip_before(self, args: tuple, kwargs: dict) -> bool:
        mod = self.adapter.modulated_input(self.blocks[0], args, kwargs).detach()
        prev, self.prev_mod = self.prev_mod, mod
        ctx = self.ctx
        self.last_change = None
        if prev is None or prev.shape != mod.shape or ctx.index == 0:
            self.acc = 0.0
            return False
        self.last_change = rel_l1(mod, prev)
        last = ctx.expected_evals > 0 and ctx.index >= ctx.expected_evals - 1
        self.acc += self.rescale(self.last_change)
        if last or self.acc >= self.config.threshold:
            self.acc = 0.0
            return False
        return True

    def on_full(self, residual: Stream) -> None:
        if self.trace is not None and self.residual is not None and self.last_change is not None:
            self.trace.append((self.last_change, rel_l1(residual[-1], self.residual[-1])))
        self.residual = residual


def fit_coefficients(pairs: list[tuple[float, float]], degree: int = POLY_DEGREE) -> tuple:
    """Least-squares polynomial (highest degree first) mapping input change -> output change.

    Args:
        pairs: ``(modulated-input change, residual change)`` of consecutive full evaluations.
    """
    if len(pairs) < degree + 1:
        raise ConfigError(
            f"fitting TeaCache needs >= {degree + 1} evaluation pairs, got {len(pairs)}"
        )
    x, y = np.asarray(pairs, dtype=np.float64).T
    return tuple(float(v) for v in np.polyfit(x, y, degree))

"""TaylorSeer (Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion Models
with TaylorSeers").

Full evaluations every ``interval`` evaluations store the block-stack residual; in between it
is *forecast* by a Taylor expansion whose derivatives are finite differences of the stored
history (Eq. 7-9). With the history at evaluation indices ``x_0 < ... < x_m`` this is the
Newton interpolation polynomial of degree ``m <= order`` evaluated at the current index
(divided differences handle uneven spacing). ``order=0`` is plain reuse (FORA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from diffspeed.cache.blocks import BlockCacheRuntime, Stream
from diffspeed.cache.hooks import CacheConfig, check_interval, register_cache
from diffspeed.errors import ConfigError

MAX_ORDER = 4


@register_cache("taylorseer")
@dataclass(frozen=True)
class TaylorSeer(CacheConfig):
    """Forecast skipped block outputs from the cached history.

    Attributes:
        interval: one full evaluation every ``interval`` evaluations (1 = no caching).
        order: Taylor order (0 = reuse, 1 = linear, 2 = quadratic extrapolation).
    """

    interval: int = 3
    order: int = 1

    families = ("transformer",)

    def validate(self) -> None:
        check_interval("TaylorSeer interval", self.interval)
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise ConfigError(f"TaylorSeer order must be an integer, got {self.order!r}")
        if not 0 <= self.order <= MAX_ORDER:
            raise ConfigError(f"TaylorSeer order must be in 0..{MAX_ORDER}, got {self.order}")

    def build(self, model: nn.Module, adapter: Any) -> TaylorSeerRuntime:
        return TaylorSeerRuntime(self, model, adapter)


def newton_forecast(xs: list[float], ys: list[Stream], x: float) -> Stream:
    """Evaluate the Newton interpolation polynomial through ``(xs[i], ys[i])`` at ``x``."""
    coef = [list(y) for y in ys]
    m = len(xs) - 1
    for level in range(1, m + 1):
        for i in range(m, level - 1, -1):
            h = xs[i] - xs[i - level]
            coef[i] = [
                None if a is None or b is None else (a - b) / h
                for a, b in zip(coef[i], coef[i - 1], strict=True)
            ]
    out = coef[m]
    for i in range(m - 1, -1, -1):
        out = [
            None if c is None or p is None else c + (x - xs[i]) * p
            for c, p in zip(coef[i], out, strict=True)
        ]
    return tuple(out)


class TaylorSeerRuntime(BlockCacheRuntime):
    """Keep the last ``order + 1`` full residuals and forecast on skipped evaluations."""

    def reset(self) -> None:
        super().reset()
        self.history: list[tuple[int, Stream]] = []

    def skip_before(self, args: tuple, kwargs: dict) -> bool:
        return self.ctx.index % self.config.interval != 0

    def on_full(self, residual: Stream) -> None:
        self.residual = residual
        self.history = (self.history + [(self.ctx.index, residual)])[-(self.config.order + 1) :]

    def approximation(self) -> Stream:
        xs = [float(i) for i, _ in self.history]
        return newton_forecast(xs, [r for _, r in self.history], float(self.ctx.index))

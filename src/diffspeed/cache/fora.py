"""FORA (Selvaraju et al. 2024, "FORA: Fast-Forward Caching in Diffusion Transformer
Acceleration"): run every block every ``interval`` evaluations and reuse the cached block
outputs in between.

Each block's contribution to the residual stream is reused; since the contributions add up,
this is the cached segment residual of :mod:`diffspeed.cache.blocks` added to the current input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from diffspeed.cache.blocks import BlockCacheRuntime
from diffspeed.cache.hooks import CacheConfig, check_interval, register_cache


@register_cache("fora")
@dataclass(frozen=True)
class FORA(CacheConfig):
    """Static block-output reuse for diffusers transformers.

    Attributes:
        interval: one full evaluation every ``interval`` evaluations (1 = no caching).
    """

    interval: int = 3

    families = ("transformer",)

    def validate(self) -> None:
        check_interval("FORA interval", self.interval)

    def build(self, model: nn.Module, adapter: Any) -> FORARuntime:
        return FORARuntime(self, model, adapter)


class FORARuntime(BlockCacheRuntime):
    """Skip all blocks on evaluations whose index is not a multiple of ``interval``."""

    def skip_before(self, args: tuple, kwargs: dict) -> bool:
        return self.ctx.index % self.config.interval != 0

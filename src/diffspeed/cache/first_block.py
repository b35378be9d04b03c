"""First-block cache (ParaAttention's "FBCache", also in diffusers as FirstBlockCache).

Block 0 always runs. Its residual ``r = block0(x) - x`` is compared with the residual of the
last full evaluation; if the relative L1 change ``mean|r - r_prev| / mean|r_prev|`` is below
``threshold`` the remaining blocks are skipped and their cached segment residual is added to
block 0's output. Otherwise everything runs and both residuals are refreshed. Threshold 0
never skips (the change is never < 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffspeed.cache.blocks import BlockCacheRuntime
from diffspeed.cache.hooks import CacheConfig, check_threshold, register_cache, rel_l1


@register_cache("first_block", "fbcache")
@dataclass(frozen=True)
class FirstBlockCache(CacheConfig):
    """Data-dependent block skipping driven by the first block's residual.

    Attributes:
        threshold: skip while the relative L1 change of block 0's residual is below this
            (0 = no caching; typical 0.05 .. 0.3).
    """

    threshold: float = 0.1

    families = ("transformer",)

    def validate(self) -> None:
        check_threshold("FirstBlockCache threshold", self.threshold)

    def build(self, model: nn.Module, adapter: Any) -> FirstBlockRuntime:
        return FirstBlockRuntime(self, model, adapter)


class FirstBlockRuntime(BlockCacheRuntime):
    """Decide after block 0 from the change of its residual (eager, outside compiled graphs)."""

    skip_from = 1

    def reset(self) -> None:
        super().reset()
        self.prev_first: torch.Tensor | None = None

    def skip_after(self, first_in: torch.Tensor, first_out: torch.Tensor) -> bool:
        r = first_out - first_in
        prev = self.prev_first
        if prev is not None and prev.shape == r.shape and rel_l1(r, prev) < self.config.threshold:
            return True
        self.prev_first = r
        return False

"""The block-stack engine shared by the transformer caches (FORA, first-block, TeaCache,
TaylorSeer).

Every block of the model's block list (named by its adapter) gets a forward wrapper. On a full
evaluation the blocks run normally and the engine records the *segment residual*
``stream_out(last block) - stream_in(first skipped block)`` for each stream (``hidden_states``
and, for joint SD3 / Flux blocks, ``encoder_hidden_states``). On a cached evaluation the first
skipped block returns ``stream_in + approximation`` and the remaining blocks pass their input
through, so the rest of the model (norm_out, proj_out, unpatchify) runs as usual.

Reusing the segment residual equals reusing every block's own residual (the residuals add up),
which is FORA's per-layer reuse; TaylorSeer forecasts it instead. Methods only decide *when*
to skip (:meth:`BlockCacheRuntime.skip_before` / :meth:`skip_after`) and *what* to add
(:meth:`approximation`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffspeed.core.steps import StepContext
from diffspeed.errors import ConfigError

from .hooks import CacheRuntime, compiler_disabled

Stream = tuple[torch.Tensor | None, ...]


def _add(a: Stream, b: Stream) -> Stream:
    return tuple(
        None if x is None or y is None else x + y.to(x.dtype) for x, y in zip(a, b, strict=True)
    )


def _sub(a: Stream, b: Stream) -> Stream:
    return tuple(None if x is None or y is None else x - y for x, y in zip(a, b, strict=True))


class BlockCacheRuntime(CacheRuntime):
    """Skip a segment of the block list and add an approximation of its residual.

    Attributes:
        skip_from: index of the first block that can be skipped (0, or 1 for the first-block
            cache, which always runs block 0 to decide).
        residual: the segment residual of the last full evaluation.
    """

    skip_from = 0

    def __init__(self, config: Any, model: nn.Module, adapter: Any) -> None:
        super().__init__()
        self.config, self.adapter = config, adapter
        self.blocks = adapter.blocks(model)
        if len(self.blocks) <= self.skip_from:
            raise ConfigError(
                f"{type(model).__name__} has {len(self.blocks)} block(s); "
                f"cache {config.method!r} needs at least {self.skip_from + 1}"
            )
        self.last = len(self.blocks) - 1
        self.ctx = StepContext(0, 0.0, 0)
        self.reset()
        for j, block in enumerate(self.blocks):
            self.wrap(block, self._make(j))

    # --- what methods implement -------------------------------------------------------------
    def skip_before(self, args: tuple, kwargs: dict) -> bool:
        """Decide before block 0 whether to skip the segment (``skip_from == 0`` methods).

        Called on every evaluation (methods update their indicators here)."""
        return False

    def skip_after(self, first_in: torch.Tensor, first_out: torch.Tensor) -> bool:
        """Decide after block 0 (hidden stream in/out) whether to skip the rest (every eval)."""
        return False

    def approximation(self) -> Stream:
        """The segment residual to add on a cached evaluation (default: reuse)."""
        return self.residual

    def on_full(self, residual: Stream) -> None:
        """Called with the fresh segment residual at the end of a full evaluation."""
        self.residual = residual

    # --- engine -----------------------------------------------------------------------------
    def reset(self) -> None:
        self.residual: Stream | None = None
        self.seg_in: Stream | None = None
        self.skipping = False

    def begin_eval(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.skipping = False

    def can_skip(self, stream: Stream) -> bool:
        """A residual exists and matches the current stream's shapes."""
        r = self.residual
        return r is not None and all(
            x is None or y is None or x.shape == y.shape for x, y in zip(stream, r, strict=True)
        )

    # The engine's decisions and bookkeeping read Python state (the step index, histories,
    # thresholds): they run eagerly, so under torch.compile the graphs hold only the blocks'
    # tensor math and no guard on the step index triggers a recompile per step.
    @compiler_disabled
    def _skip(self, stream: Stream) -> Any:
        self.skipping = True
        return self.adapter.pack(_add(stream, self.approximation()))

    @compiler_disabled
    def _decide_before(self, args: tuple, kwargs: dict, stream: Stream) -> bool:
        return self.skip_from == 0 and self.skip_before(args, kwargs) and self.can_skip(stream)

    @compiler_disabled
    def _decide_after(self, stream: Stream, out_stream: Stream) -> bool:
        return self.skip_after(stream[-1], out_stream[-1]) and self.can_skip(out_stream)

    @compiler_disabled
    def _record(self, residual: Stream) -> None:
        self.on_full(residual)

    @compiler_disabled
    def _start_full(self, stream: Stream) -> None:
        self.full += 1
        self.seg_in = stream

    def _make(self, j: int):
        ad = self.adapter

        def make(orig):
            def forward(*args: Any, **kwargs: Any) -> Any:
                if j == 0:
                    return self._first(orig, args, kwargs)
                if self.skipping:
                    return ad.pack(ad.stream_in(args, kwargs))
                out = orig(*args, **kwargs)
                if j == self.last:
                    self._record(_sub(ad.stream_out(out), self.seg_in))
                return out

            return forward

        return make

    def _first(self, orig, args: tuple, kwargs: dict) -> Any:
        ad = self.adapter
        stream = ad.stream_in(args, kwargs)
        if self._decide_before(args, kwargs, stream):
            return self._skip(stream)
        out = orig(*args, **kwargs)
        if self.skip_from == 1:
            out_stream = ad.stream_out(out)
            if self._decide_after(stream, out_stream):
                return self._skip(out_stream)
            stream = out_stream
        self._start_full(stream)
        if self.last == 0:
            self._record(_sub(ad.stream_out(out), stream))
        return out

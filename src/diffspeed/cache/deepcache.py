"""DeepCache (Ma, Fang & Wang 2024, "DeepCache: Accelerating Diffusion Models for Free").

A UNet's deep features change slowly between denoising steps. Every few evaluations the
whole UNet runs (a *full* evaluation) and the outputs of its deep modules are kept; in between
(a *partial* evaluation) only the shallow branch runs and reuses them.

Definition used here (diffusers layout, ``n`` down blocks, up blocks paired in reverse):
with ``branch = b`` the shallow branch is ``conv_in``, ``down_blocks[0..b]``,
``up_blocks[n-1-b..n-1]`` and the output head. The deep modules are ``down_blocks[b+1:]``,
the ``mid_block`` and ``up_blocks[:n-1-b]``; on a partial evaluation each returns its output
from the last full evaluation. So the input of ``up_blocks[n-1-b]`` is the cached output of
``up_blocks[n-2-b]`` (the paper's cached feature ``U_{m+1}``, Sec. 3.2), concatenated with the
freshly computed skip features of the shallow down blocks. ``branch = 0`` is the shallowest
block-level branch; ``branch = n-1`` skips only the mid block.

``input_branch=True`` goes one level finer, to the paper's shallowest skip branch (the one fed
by ``conv_in``; the paper picks branches at layer granularity): the partial evaluation runs
only ``conv_in``, the *last* layer of the last up block (resnet, plus its attention where the
block has one) and the output head. Every other layer of the last up block and the whole first
down block also return their cached outputs (the down block's skip features feed only those
cached layers).

Refresh schedules (Sec. 3.3): ``"uniform"`` runs a full evaluation every ``interval``
evaluations; ``"nonuniform"`` spends the same number of full evaluations, spaced
quadratically denser around ``center`` (a fraction of the run), where features change fastest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffspeed.cache.hooks import CacheConfig, CacheRuntime, check_interval, register_cache
from diffspeed.core.steps import StepContext
from diffspeed.errors import ConfigError

SCHEDULES = ("uniform", "nonuniform")


@register_cache("deepcache")
@dataclass(frozen=True)
class DeepCache(CacheConfig):
    """DeepCache for diffusers ``UNet2DModel`` / ``UNet2DConditionModel``.

    Attributes:
        interval: one full evaluation every ``interval`` evaluations (1 = no caching).
        branch: index of the deepest down block in the shallow branch (0 = shallowest).
        input_branch: the finer, layer-level shallowest branch (see the module doc; needs
            ``branch=0``): fastest partial evaluations, most reuse.
        schedule: ``"uniform"`` or ``"nonuniform"`` refreshes.
        center: non-uniform only: where refreshes are densest, as a fraction of the run.
        power: non-uniform only: spacing exponent (> 1; larger = more concentrated).
    """

    interval: int = 3
    branch: int = 0
    input_branch: bool = False
    schedule: str = "uniform"
    center: float = 0.5
    power: float = 1.4

    families = ("unet",)

    def validate(self) -> None:
        check_interval("DeepCache interval", self.interval)
        if isinstance(self.branch, bool) or not isinstance(self.branch, int) or self.branch < 0:
            raise ConfigError(f"DeepCache branch must be an integer >= 0, got {self.branch!r}")
        if not isinstance(self.input_branch, bool):
            raise ConfigError(f"DeepCache input_branch must be true or false, got "
                              f"{self.input_branch!r}")  # fmt: skip
        if self.input_branch and self.branch != 0:
            raise ConfigError(
                f"DeepCache input_branch is finer than branch 0; it cannot be combined with "
                f"branch={self.branch}: drop one of them"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"DeepCache schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )
        if not 0.0 <= self.center <= 1.0:
            raise ConfigError(f"DeepCache center must lie in [0, 1], got {self.center!r}")
        if not self.power > 1.0:
            raise ConfigError(f"DeepCache power must be > 1, got {self.power!r}")

    def build(self, model: nn.Module, adapter: Any) -> DeepCacheRuntime:
        return DeepCacheRuntime(self, model, adapter)


def _leading_layers(block: nn.Module) -> list[nn.Module]:
    """All layers of an up block but its last: its resnets (and attentions, if any)."""
    resnets = list(getattr(block, "resnets", []))
    if len(resnets) < 2:
        raise ConfigError(
            "DeepCache input_branch needs an up block with at least two resnet layers; this "
            "UNet's last up block has fewer: use input_branch=False"
        )
    attentions = list(getattr(block, "attentions", None) or [])
    return resnets[:-1] + attentions[: len(resnets) - 1]


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """Shape of a block's input hidden states (its first tensor argument)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    return None


def nonuniform_full_steps(total: int, n_full: int, center: float, power: float) -> set[int]:
    """``n_full`` evaluation indices in ``[0, total)``, denser around ``center * total``.

    Indices are ``c + sign(u) |u|**power`` for ``u`` evenly spaced between the ends, so the
    gaps grow away from ``c``; index 0 is always included. Collisions after rounding are
    filled with the nearest free indices, so exactly ``min(n_full, total)`` are returned.
    """
    n_full = max(1, min(n_full, total))
    c = center * (total - 1)
    lo, hi = -(c ** (1 / power)), (total - 1 - c) ** (1 / power)
    picks = {0}
    for k in range(n_full):
        u = lo + (hi - lo) * k / max(1, n_full - 1)
        picks.add(min(total - 1, max(0, round(c + math.copysign(abs(u) ** power, u)))))
    free = sorted(set(range(total)) - picks, key=lambda i: abs(i - c))
    while len(picks) < n_full:
        picks.add(free.pop(0))
    return picks


class DeepCacheRuntime(CacheRuntime):
    """Wraps the deep modules; each returns its cached output on partial evaluations."""

    def __init__(self, config: DeepCache, model: nn.Module, adapter: Any) -> None:
        super().__init__()
        self.config = config
        down, mid, up = adapter.unet_blocks(model)
        n, b = len(down), config.branch
        if len(up) != n:
            raise ConfigError(f"DeepCache needs as many up blocks as down blocks ({len(up)}, {n})")
        if b >= n:
            raise ConfigError(
                f"DeepCache branch {b} is out of range for a UNet with {n} down blocks; "
                f"choose 0..{n - 1}"
            )
        deep = down[b + 1 :] + ([mid] if mid is not None else []) + up[: n - 1 - b]
        if config.input_branch:
            deep = [down[0], *deep, *_leading_layers(up[-1])]
        self.store: dict[int, Any] = {}
        self.shapes: dict[int, tuple[int, ...] | None] = {}
        self.is_full = True
        self._full_steps: set[int] | None = None
        self._for_total = -1
        for key, module in enumerate(deep):
            self.wrap(module, self._make(key))

    def _make(self, key: int):
        def make(orig):
            def forward(*args: Any, **kwargs: Any) -> Any:
                shape = _input_shape(args, kwargs)
                if not self.is_full and key in self.store:
                    if self.shapes.get(key) == shape:
                        return self.store[key]
                    # the input layout changed (e.g. the parallel sampler's window shrank):
                    # the cached features do not fit, so this evaluation becomes a full one
                    self.is_full = True
                    self.full += 1
                out = orig(*args, **kwargs)
                self.store[key], self.shapes[key] = out, shape
                return out

            return forward

        return make

    def reset(self) -> None:
        self.store.clear()
        self.shapes.clear()
        self.is_full = True
        self._full_steps, self._for_total = None, -1

    def _is_full_step(self, ctx: StepContext) -> bool:
        cfg = self.config
        total = ctx.expected_evals or ctx.total_steps
        if cfg.schedule == "uniform" or cfg.interval == 1 or total <= 0:
            return ctx.index % cfg.interval == 0
        if self._for_total != total:
            n_full = math.ceil(total / cfg.interval)
            self._full_steps = nonuniform_full_steps(total, n_full, cfg.center, cfg.power)
            self._for_total = total
        return ctx.index in self._full_steps or ctx.index >= total

    def begin_eval(self, ctx: StepContext) -> None:
        self.is_full = self._is_full_step(ctx) or not self.store
        self.full += int(self.is_full)

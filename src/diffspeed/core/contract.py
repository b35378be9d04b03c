"""The conditioning contract: what a denoiser takes as ``cond`` and what "unconditional" means.

Every denoiser carries a :class:`CondSpec`. Guidance, distillation targets, consistency
teachers, trajectories, students' recipes, the bench and the caches read it; none of them names
a conditioning key, a label number or an image shape of their own.

- the digits teacher: ``keys=("class_labels",)``, ``uncond={"class_labels": null class}``;
- a Stable Diffusion UNet: ``keys=("encoder_hidden_states",)``,
  ``uncond={"encoder_hidden_states": empty-prompt embeddings [1, L, D]}``;
- an unconditional model: ``keys=()``, ``uncond={}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffspeed.errors import ConfigError, ShapeError, did_you_mean


@dataclass(frozen=True)
class CondSpec:
    """The conditioning a denoiser takes.

    Attributes:
        keys: the ``cond`` keys the network takes (all required when given); ``None`` means not
            declared (any keys pass, nothing is checked).
        uncond: per key, the unconditional value: a scalar or a batch-1 tensor broadcast to the
            batch (a null class; empty-prompt embeddings). Empty when the model has no
            unconditional input; ``None`` when the key set is undeclared.
        batch_dims: per key, the dimension that indexes samples (0 when not named).
        sample_shape: the model's input shape without the batch (``(C, H, W)``), when known.
        classes: per key of integer labels, the number of label values the network embeds
            (labels must lie in ``0 .. n-1``, the null class included).
        examples: ``examples(n) -> cond`` gives ``n`` representative conditions (one per sample,
            e.g. the classes in turn or a prompt list), for benches and data-free distillation;
            ``None`` when the model's owner supplies none.
    """

    keys: tuple[str, ...] | None = None
    uncond: Mapping[str, Any] | None = None
    batch_dims: Mapping[str, int] = field(default_factory=dict)
    sample_shape: tuple[int, ...] | None = None
    classes: Mapping[str, int] = field(default_factory=dict)
    examples: Callable[[int], dict[str, Any]] | None = field(default=None, compare=False)

    @property
    def conditional(self) -> bool:
        """Whether the model takes any conditioning."""
        return bool(self.keys)

    @property
    def guidable(self) -> bool:
        """Whether classifier-free guidance can be formed (an uncond value for some key)."""
        return bool(self.uncond)

    def batch_dim(self, key: str) -> int:
        """The sample dimension of ``cond[key]``."""
        return self.batch_dims.get(key, 0)

    def uncond_values(self) -> dict[str, Any]:
        """The unconditional inputs, for :func:`diffspeed.guidance`; refuses a spec without."""
        if not self.uncond:
            raise ConfigError(
                "this model declares no unconditional input, so classifier-free guidance has "
                "nothing to contrast with; pass uncond={key: value} explicitly (e.g. the null "
                "class, or the empty prompt's embeddings)"
            )
        return dict(self.uncond)

    def unconditional(self, batch: int, like: torch.Tensor | None = None) -> dict[str, Any]:
        """The unconditional ``cond`` for ``batch`` samples (each value broadcast)."""
        out = {}
        for key, value in self.uncond_values().items():
            t = torch.as_tensor(value)
            if like is not None:
                t = t.to(like.device)
            dim = self.batch_dim(key)
            if t.ndim == 0:
                out[key] = t.expand(batch)
            else:
                shape = list(t.shape)
                shape[dim] = batch
                out[key] = t.expand(*shape) if t.shape[dim] == 1 else t
        return out

    def example_cond(self, n: int) -> dict[str, Any]:
        """``n`` representative conditions (``{}`` for an unconditional model)."""
        if not self.conditional:
            return {}
        if self.examples is None:
            raise ConfigError(
                f"the model takes cond keys {list(self.keys or ())} but names no example "
                "conditions; pass the conditions explicitly (cond=...) or build the denoiser "
                "with a CondSpec(examples=...)"
            )
        return self.examples(n)

    def check(self, cond: Mapping[str, Any], batch: int) -> None:
        """Refuse missing or unknown keys, labels outside the model's classes and values
        whose sample count is not ``batch``."""
        if not isinstance(cond, Mapping):
            raise ConfigError(
                f"cond must be a dict {{key: value}}, got {type(cond).__name__}; e.g. "
                f"cond={{{', '.join(repr(k) + ': ...' for k in self.keys or ('key',))}}}"
            )
        if self.keys is None:
            return
        missing = [k for k in self.keys if k not in cond]
        unknown = [k for k in cond if k not in self.keys]
        if missing or unknown:
            hints = "".join(did_you_mean(k, missing or self.keys) for k in unknown)
            raise ConfigError(
                f"cond keys {sorted(map(str, cond))} do not match the model's {list(self.keys)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
                + hints
                + f"; pass cond with exactly the keys {list(self.keys)}"
            )
        for key in self.keys:
            value = cond[key]
            if key in self.classes:
                _check_labels(key, value, self.classes[key])
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                n = value.shape[self.batch_dim(key)]
                if n not in (1, batch):
                    raise ShapeError(
                        f"cond[{key!r}] holds {n} samples but the batch has {batch}; give one "
                        "value per sample (or a single value to share)"
                    )

    def select(self, cond: Mapping[str, Any], index: slice | torch.Tensor) -> dict[str, Any]:
        """The conditions of the samples ``index`` (batch-1 / scalar values are shared)."""
        out = {}
        for key, value in cond.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                out[key] = value
                continue
            dim = self.batch_dim(key)
            if value.shape[dim] == 1:
                out[key] = value
            elif isinstance(index, slice):
                out[key] = value[(slice(None),) * dim + (index,)]
            else:
                out[key] = value.index_select(dim, index.to(value.device))
        return out


def _check_labels(key: str, value: Any, n: int) -> None:
    """Refuse class labels that are not integers in ``0 .. n-1``."""
    t = value if isinstance(value, torch.Tensor) else None
    if t is None:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                f"cond[{key!r}] must be integer class labels, got {type(value).__name__}; "
                f"pass a LongTensor of labels in 0..{n - 1}"
            ) from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ConfigError(
            f"cond[{key!r}] must hold integer class labels, got dtype {t.dtype}; pass "
            f"torch.tensor([...], dtype=torch.long) with labels in 0..{n - 1}"
        )
    if t.ndim > 1:
        raise ShapeError(
            f"cond[{key!r}] must be one label per sample [B], got shape {tuple(t.shape)}"
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        bad = t[(t < 0) | (t >= n)].unique()[:5].tolist()
        raise ConfigError(
            f"cond[{key!r}] has labels {bad} outside the model's classes 0..{n - 1}; "
            "pass labels in that range"
        )


#: The spec of a denoiser that declares nothing (any cond passes through unchecked).
UNDECLARED = CondSpec()


@runtime_checkable
class DenoiserLike(Protocol):
    """What every denoiser (adapter or wrapper) offers: ``D(x, sigma, **cond) -> x0_hat``."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor: ...

    @property
    def nfe(self) -> int: ...

    @property
    def cond_spec(self) -> CondSpec: ...

    def noise_scale(self, sigma: float) -> float: ...


def innermost(denoiser: Any) -> Any:
    """The adapter at the bottom of any stack of wrappers (guidance, consistency, steppers).

    Follows ``.inner`` (what wrappers name the denoiser they wrap) until it ends.
    """
    seen = set()
    while hasattr(denoiser, "inner") and id(denoiser) not in seen:
        seen.add(id(denoiser))
        denoiser = denoiser.inner
    return denoiser


def network_of(denoiser: Any) -> torch.nn.Module | None:
    """The network module under any depth of wrappers (``None`` for a plain function)."""
    return getattr(innermost(denoiser), "model", None)


def check_inputs(denoiser: Any, noise: torch.Tensor, cond: Mapping[str, Any] | None) -> None:
    """Refuse a sampling call whose noise or ``cond`` does not fit the denoiser's spec.

    Checks the ``cond`` keys and per-key sample counts (:meth:`CondSpec.check`) and, when the
    spec knows it, the sample shape against ``noise.shape[1:]``. A denoiser without a spec
    (a plain function) is not checked.

    Raises:
        ShapeError: noise that is not ``[B, ...]`` of the model's sample shape, or a ``cond``
            value with another number of samples.
        ConfigError: missing or unknown ``cond`` keys.
    """
    spec = getattr(denoiser, "cond_spec", UNDECLARED)
    if not isinstance(noise, torch.Tensor) or noise.ndim < 2:
        raise ShapeError(
            f"noise must be a [B, ...] tensor, got {type(noise).__name__} "
            f"{tuple(getattr(noise, 'shape', ()))}; draw it with torch.randn(B, C, H, W)"
        )
    if noise.shape[0] == 0:
        raise ShapeError("noise holds 0 samples; draw noise of shape [B, ...] with B >= 1")
    want = None if spec.sample_shape is None else tuple(spec.sample_shape)
    if want is not None and tuple(noise.shape[1:]) != want:
        raise ShapeError(
            f"noise has sample shape {tuple(noise.shape[1:])} but the model takes {want}; "
            f"draw noise of shape [B, {', '.join(map(str, want))}]"
        )
    if noise.is_floating_point() and not bool(torch.isfinite(noise).all()):
        raise ShapeError("noise contains NaN or Inf; draw finite unit Gaussian noise")
    spec.check({} if cond is None else cond, noise.shape[0])


def cond_to(cond: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """``cond`` with every tensor value moved to ``device`` (other values unchanged)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}

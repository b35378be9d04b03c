"""Classifier-free guidance as a wrapper around any denoiser (Ho & Salimans 2022).

``D_w(x) = D(x | uncond) + w * (D(x | cond) - D(x | uncond))``, cond and uncond batched into
one forward of twice the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffspeed.core.contract import UNDECLARED
from diffspeed.core.denoiser import Denoiser, DenoiserWrapper
from diffspeed.errors import ConfigError, ShapeError


def _batch_of(value: Any, batch: int, dim: int = 0) -> Any:
    """Broadcast an uncond value (scalar, batch-1 or batch-B tensor, nested dict) to ``batch``
    samples along its sample dimension ``dim``."""
    if isinstance(value, dict):
        return {k: _batch_of(v, batch, dim) for k, v in value.items()}
    t = torch.as_tensor(value)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape[dim] == 1 and batch != 1:
        shape = list(t.shape)
        shape[dim] = batch
        return t.expand(*shape)
    if t.shape[dim] != batch:
        raise ShapeError(f"an uncond tensor has batch {t.shape[dim]}; expected 1 or {batch}")
    return t


def _cat(a: Any, b: Any, dim: int = 0) -> Any:
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k], dim) for k in a}
    if a is None or isinstance(a, bool | str):
        return a
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return torch.cat([a, b.to(device=a.device, dtype=a.dtype)], dim=dim)


def check_scale(scale: Any) -> float | torch.Tensor:
    """Refuse a guidance scale that is not a finite number (or a 0-/1-D tensor of them)."""
    if isinstance(scale, torch.Tensor):
        if scale.is_complex() or scale.ndim > 1 or not bool(torch.isfinite(scale.float()).all()):
            raise ConfigError(
                f"the guidance scale must be finite numbers (a float or a [B] tensor), got a "
                f"{scale.dtype} tensor of shape {tuple(scale.shape)}; e.g. guidance(den, 2.0)"
            )
        return scale
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ConfigError(
            f"the guidance scale must be a number, got {type(scale).__name__} {scale!r}; "
            "e.g. guidance(den, 2.0) (1 = no guidance)"
        )
    if not math.isfinite(scale):
        raise ConfigError(
            f"the guidance scale is {scale}; give a finite number such as 2.0 (1 = no guidance)"
        )
    return float(scale)


class GuidedDenoiser(DenoiserWrapper):
    """A denoiser with classifier-free guidance folded in (same contract as :class:`Denoiser`).

    Args:
        denoiser: the conditional denoiser.
        scale: guidance weight ``w`` (1 = conditional only, 0 = unconditional only), a float or
            a ``[B]`` tensor (one scale per sample).
        uncond: for each conditioning key, the unconditional value: a scalar (e.g. the null
            class label), a batch-1 tensor (e.g. empty-prompt embeddings) or a batch-B tensor.
            Keys of ``cond`` not named here are passed identically to both halves. ``None``
            takes the denoiser's own (``denoiser.cond_spec.uncond``).
    """

    def __init__(
        self, denoiser: Denoiser, scale: float | torch.Tensor, uncond: dict[str, Any] | None = None
    ) -> None:
        super().__init__(denoiser)
        if uncond is None:
            uncond = denoiser.cond_spec.uncond_values()
        if not isinstance(uncond, dict) or not uncond:
            raise ConfigError(
                "guidance needs uncond={key: value}, e.g. the null class or "
                "{'encoder_hidden_states': empty_prompt_embeddings}"
            )
        self.scale = check_scale(scale)
        self.uncond = uncond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """Guided ``x0_hat``: one forward of the inner denoiser on ``[cond; uncond]``."""
        b = x.shape[0]
        missing = [k for k in self.uncond if k not in cond]
        if missing:
            raise ConfigError(f"guidance: cond is missing {missing}, which uncond names")
        sigma = self.inner.check_sigma(sigma, b)
        dim = getattr(self.inner, "cond_spec", UNDECLARED).batch_dim
        cond_u = {
            k: _batch_of(self.uncond[k], b, dim(k)) if k in self.uncond else v
            for k, v in cond.items()
        }
        both = {k: _cat(cond[k], cond_u[k], dim(k)) for k in cond}
        d_c, d_u = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        w = torch.as_tensor(self.scale, dtype=d_c.dtype, device=d_c.device)
        if w.ndim == 1:
            w = w.view(-1, *([1] * (x.ndim - 1)))
        return d_u + w * (d_c - d_u)


def guidance(
    denoiser: Denoiser, scale: float | torch.Tensor, uncond: dict[str, Any] | None = None
) -> GuidedDenoiser:
    """Classifier-free guidance around ``denoiser``; see :class:`GuidedDenoiser`.

    ``uncond`` defaults to the denoiser's conditioning spec (its null class, empty prompt).
    """
    return GuidedDenoiser(denoiser, scale, uncond)

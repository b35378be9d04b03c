"""The one contract: a denoiser ``D(x, sigma, **cond) -> x0_hat`` in the VE convention.

``x = x0 + sigma * noise``; ``sigma`` is a ``[B]`` tensor. Adapters turn any network into a
denoiser through the preconditioning table of Karras et al. 2022 (EDM, Table 1):
``D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise, **cond)``. Each adapter only supplies
those scalings; validation, NFE counting and dtype handling live here once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from diffspeed.core.contract import UNDECLARED, CondSpec
from diffspeed.errors import NonFiniteError, ShapeError, SigmaRangeError

#: Relative slack when checking that a requested sigma lies in the model's range.
SIGMA_RANGE_RTOL = 1e-4


def network_output(out: Any) -> torch.Tensor:
    """Unwrap what a network returned: a tensor, a diffusers ``*Output`` or a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ShapeError(
        f"the model returned {type(out).__name__}; expected a tensor, a diffusers output with "
        "`.sample`, or a tuple whose first item is a tensor"
    )


class Denoiser(nn.Module):
    """Base class of every denoiser: validation, NFE counting, dtype casting.

    Subclasses implement :meth:`scalings` (the EDM preconditioning for one sigma batch) and
    hold the raw network as ``self.net`` (a callable ``net(x_in, c_noise, **cond)``); the
    network module, when it is one, is ``self.model`` so hooks (caches) can find it.

    Attributes:
        sigma_min, sigma_max: the range of noise levels the model was trained on.
        nfe: network evaluations since the last :meth:`reset_nfe` (one per call; a guided call
            that batches cond and uncond counts once here and is reported as such).
        variance_preserving: whether the underlying model is VP (noise is scaled by
            ``sqrt(1 + sigma**2)`` at the start) or VE (scaled by ``sigma``).
        cond_spec: the conditioning it takes and its unconditional value
            (:class:`~diffspeed.core.contract.CondSpec`; undeclared until an adapter or the
            model's owner sets it).
    """

    variance_preserving: bool = False

    def __init__(
        self,
        net: Callable[..., Any],
        sigma_min: float,
        sigma_max: float,
        *,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise SigmaRangeError(
                f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}"
            )
        self.net = net
        self.model = net if isinstance(net, nn.Module) else None
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.check_finite = check_finite
        self.nfe = 0
        self.cond_spec: CondSpec = UNDECLARED

    # --- what adapters provide -------------------------------------------------------------
    def scalings(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for a float64 ``[B]`` sigma."""
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------------
    def reset_nfe(self) -> None:
        """Set the network-evaluation counter back to zero."""
        self.nfe = 0

    def noise_scale(self, sigma: float) -> float:
        """Factor turning unit Gaussian noise into the starting point at ``sigma``.

        VP models start from ``noise * sqrt(1 + sigma**2)`` (the VE view of diffusers'
        ``x_T = noise``); VE models from ``noise * sigma``.
        """
        return math.sqrt(1.0 + sigma**2) if self.variance_preserving else float(sigma)

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model's parameters (CPU when it has none)."""
        if self.model is not None:
            for p in self.model.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the wrapped model's parameters (float32 when it has none; a plain
        function without parameters is called in the input's dtype)."""
        if self.model is not None:
            for p in self.model.parameters():
                if p.is_floating_point():
                    return p.dtype
        return torch.float32

    def check_sigma(self, sigma: torch.Tensor | float, batch: int | None = None) -> torch.Tensor:
        """Validate a sigma (scalar or ``[B]``) and return it as a ``[B]`` tensor."""
        s = torch.as_tensor(sigma)
        if s.ndim == 0 and batch is not None:
            s = s.expand(batch)
        if s.ndim != 1 or (batch is not None and s.shape[0] != batch):
            raise ShapeError(
                f"sigma must be a scalar or a [B] tensor with B={batch}, got shape {tuple(s.shape)}"
            )
        if not torch.isfinite(s).all():
            raise SigmaRangeError("sigma contains NaN or Inf")
        lo = self.sigma_min * (1 - SIGMA_RANGE_RTOL)
        hi = self.sigma_max * (1 + SIGMA_RANGE_RTOL)
        smin, smax = float(s.min()), float(s.max())
        if smin < lo or smax > hi:
            raise SigmaRangeError(
                f"sigma in [{smin:.6g}, {smax:.6g}] is outside the model's range "
                f"[{self.sigma_min:.6g}, {self.sigma_max:.6g}]; clip the schedule to the "
                "model's sigma_min/sigma_max (e.g. build it with diffspeed.schedules)"
            )
        return s

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """Return the denoised estimate ``x0_hat`` of ``x`` (shape ``[B, ...]``) at ``sigma``."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            raise ShapeError(
                "x must be a floating-point tensor of shape [B, ...], got "
                f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}"
            )
        s = self.check_sigma(sigma, x.shape[0]).to(device=x.device, dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = (c.to(x.device) for c in self.scalings(s))
        view = (-1,) + (1,) * (x.ndim - 1)
        mdtype = self.dtype if self.model is not None else x.dtype
        x_in = (x.double() * c_in.view(view)).to(mdtype)
        out = network_output(self.net(x_in, c_noise.to(mdtype), **cond))
        self.nfe += 1
        if out.shape != x.shape:
            raise ShapeError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                "the denoiser contract needs the output to match the input"
            )
        if self.check_finite and not torch.isfinite(out).all():
            raise NonFiniteError(
                f"the model returned NaN/Inf at sigma in [{float(s.min()):.4g}, "
                f"{float(s.max()):.4g}]; check the weights, the dtype (fp16 overflow) and the input"
            )
        work = torch.promote_types(x.dtype, torch.float32)
        res = c_skip.view(view).to(work) * x.to(work) + c_out.view(view).to(work) * out.to(work)
        return res


class DenoiserWrapper(nn.Module):
    """Base of denoisers built around another one (guidance, consistency, ...).

    The contract's attributes (``sigma_min``, ``sigma_max``, ``nfe``, ``noise_scale``, the model,
    device and dtype, sigma validation) come from ``self.inner``; subclasses write ``forward``.
    """

    def __init__(self, inner: Denoiser | DenoiserWrapper) -> None:
        super().__init__()
        self.inner = inner

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    @property
    def nfe(self) -> int:
        return self.inner.nfe

    @property
    def cond_spec(self) -> CondSpec:
        return self.inner.cond_spec

    def reset_nfe(self) -> None:
        """Reset the inner denoiser's network-evaluation counter."""
        self.inner.reset_nfe()

    def noise_scale(self, sigma: float) -> float:
        """See :meth:`Denoiser.noise_scale`."""
        return self.inner.noise_scale(sigma)

    @property
    def variance_preserving(self) -> bool:
        return self.inner.variance_preserving

    @property
    def model(self) -> nn.Module | None:
        return self.inner.model

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def check_sigma(self, sigma: torch.Tensor | float, batch: int | None = None) -> torch.Tensor:
        """Validate a sigma against the inner range (see :meth:`Denoiser.check_sigma`)."""
        return self.inner.check_sigma(sigma, batch)

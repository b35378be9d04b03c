"""The consistency parameterisation as a denoiser wrapper (Song et al. 2023, eq. 5; LCM eq. 9).

A consistency function maps any point ``x`` at noise level ``sigma`` of a probability-flow
trajectory to the trajectory's end at ``sigma_min``. It is parameterised around a denoiser ``D``
(whose output is already an ``x0`` estimate) as

    f(x, sigma) = c_skip(sigma) * x + c_out(sigma) * D(x, sigma)
    c_skip = sigma_data^2 / (s^2 + sigma_data^2),   c_out = s / sqrt(s^2 + sigma_data^2),
    s = scale * (sigma - sigma_min),

so ``c_skip = 1`` and ``c_out = 0`` at ``sigma = sigma_min``: the boundary condition
``f(x, sigma_min) = x`` holds exactly, for any network. ``scale`` stretches the noise axis like
the LCM scheduler's ``timestep_scaling``: with the default 100, ``f`` is ``D`` to within 0.3 %
for ``sigma > 0.1``, so a student initialised from the teacher starts as a good ``x0`` estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffspeed.errors import ConfigError


@dataclass(frozen=True)
class Boundary:
    """The boundary-condition scalings of a consistency model.

    Attributes:
        sigma_data: the data standard deviation in the scalings (0.5 as in Song et al. and LCM).
        scale: stretch of ``sigma - sigma_min`` (LCM's ``timestep_scaling`` in sigma units).
    """

    sigma_data: float = 0.5
    scale: float = 100.0

    def __post_init__(self) -> None:
        if not (self.sigma_data > 0 and self.scale > 0):
            raise ConfigError(
                f"Boundary needs sigma_data > 0 and scale > 0, got {self.sigma_data}, {self.scale}"
            )

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return asdict(self)

    def scalings(self, sigma: torch.Tensor, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out)`` in float64 for a ``[B]`` sigma (exactly ``(1, 0)`` at sigma_min).

        The difference ``sigma - sigma_min`` is taken in sigma's own dtype, so a float32 sigma
        equal to the float32 ``sigma_min`` gives exactly zero.
        """
        gap = (sigma - torch.as_tensor(sigma_min, dtype=sigma.dtype)).double().clamp_min(0)
        s = self.scale * gap
        sd2 = self.sigma_data**2
        return sd2 / (s**2 + sd2), s / torch.sqrt(s**2 + sd2)


class ConsistencyDenoiser(nn.Module):
    """``f(x, sigma) = c_skip x + c_out D(x, sigma)`` around a denoiser (same contract).

    Args:
        inner: the denoiser ``D`` (e.g. a student UNet wrapped with ``from_diffusers``); its
            ``sigma_min`` is the boundary.
        boundary: the scalings (:class:`Boundary`).

    The result is itself a denoiser (``f`` estimates the trajectory's end, i.e. ``x0``), so any
    solver runs on it; the consistency samplers (``solver="consistency"`` / ``"lcm"``) are the
    ones it is trained for.
    """

    def __init__(self, inner: Any, boundary: Boundary = Boundary()) -> None:
        super().__init__()
        self.inner = inner
        self.boundary = boundary

    # The contract's attributes come from the inner denoiser.
    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    @property
    def nfe(self) -> int:
        return self.inner.nfe

    def reset_nfe(self) -> None:
        self.inner.reset_nfe()

    def noise_scale(self, sigma: float) -> float:
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
        """Validate a sigma against the inner denoiser's range (see ``Denoiser.check_sigma``)."""
        return self.inner.check_sigma(sigma, batch)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The consistency function ``f(x, sigma)`` (``x`` is ``[B, ...]``, sigma scalar or [B])."""
        d = self.inner(x, sigma, **cond)
        s = self.inner.check_sigma(sigma, x.shape[0]).to(x.device)
        c_skip, c_out = self.boundary.scalings(s, self.inner.sigma_min)
        view = (-1,) + (1,) * (x.ndim - 1)
        return c_skip.view(view).to(d.dtype) * x.to(d.dtype) + c_out.view(view).to(d.dtype) * d

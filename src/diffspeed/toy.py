"""Analytic toy data whose optimal denoiser and probability-flow ODE are known in closed form.

Used to check solvers (convergence order, exactness) and adapters without a trained network.
For data ``x0 ~ N(mu, s^2 I)`` the optimal VE denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and the PF-ODE solution is
``x(sigma) = mu + sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)) (x(sigma_0) - mu)``.
For a Gaussian mixture the posterior mean is closed-form too (the ODE is integrated with a
high-order solver at a tiny step instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class GaussianToy(nn.Module):
    """Per-dimension Gaussian data ``N(mu, s^2)``; ``forward`` is the exact VE denoiser."""

    def __init__(self, mu: float | torch.Tensor = 0.3, s: float | torch.Tensor = 0.7) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float64))

    def _v(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sigma.to(torch.float64).view(-1, *([1] * (x.ndim - 1)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact posterior mean ``E[x0 | x]`` at noise level ``sigma`` (``[B]``)."""
        sg = self._v(sigma, x)
        s2 = self.s**2
        return (self.mu + s2 / (s2 + sg**2) * (x.double() - self.mu)).to(x.dtype)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact noise prediction ``(x - D(x)) / sigma`` (VE input)."""
        return (x - self(x, sigma)) / self._v(sigma, x).to(x.dtype)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Exact PF-ODE transport of ``x`` from ``sigma_from`` to ``sigma_to``."""
        s2 = float(self.s**2) if self.s.ndim == 0 else self.s**2
        ratio = torch.sqrt(torch.as_tensor((s2 + sigma_to**2) / (s2 + sigma_from**2)))
        return self.mu + ratio.to(x.dtype) * (x - self.mu)


class GaussianMixtureToy(nn.Module):
    """Isotropic Gaussian mixture ``sum_k w_k N(m_k, s^2 I)`` in ``D`` dims; exact denoiser."""

    def __init__(
        self,
        means: Sequence[Sequence[float]] | torch.Tensor,
        s: float = 0.3,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        m = torch.as_tensor(means, dtype=torch.float64)
        w = torch.full((m.shape[0],), 1.0 / m.shape[0], dtype=torch.float64)
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("means", m)
        self.register_buffer("log_w", w.log())
        self.s = float(s)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact ``E[x0 | x]`` for ``x`` of shape ``[B, D]`` (or ``[B, ...]`` flattening to D)."""
        shape = x.shape
        xf = x.double().reshape(shape[0], -1)
        var = self.s**2 + sigma.double().view(-1, 1) ** 2  # [B, 1]
        d2 = torch.cdist(xf, self.means) ** 2  # [B, K]
        logits = self.log_w - d2 / (2 * var) - xf.shape[1] / 2 * var.log()
        r = torch.softmax(logits, dim=1)  # responsibilities
        post = self.means.unsqueeze(0) + (self.s**2 / var).unsqueeze(-1) * (
            xf.unsqueeze(1) - self.means.unsqueeze(0)
        )  # per-component posterior means [B, K, D]
        return (r.unsqueeze(-1) * post).sum(1).reshape(shape).to(x.dtype)


def vp_eps_network(toy: nn.Module, alphas_cumprod: torch.Tensor, prediction: str = "epsilon"):
    """A discrete-time VP network ``net(x_t, t)`` built from a toy's exact denoiser.

    ``t`` may be fractional (it is mapped back to sigma by log-sigma interpolation), so the
    result is exactly what :func:`diffspeed.wrap` expects for eps-, v- or x0-prediction.
    """
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    log_sig = torch.sqrt((1 - ac) / ac).log()

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        lo = t.floor().long().clamp(0, ac.numel() - 2)
        w = t - lo
        sigma = ((1 - w) * log_sig[lo] + w * log_sig[lo + 1]).exp()
        view = (-1,) + (1,) * (x_t.ndim - 1)
        alpha = (1 / torch.sqrt(1 + sigma**2)).view(view)
        x_ve = x_t.double() / alpha
        x0 = toy(x_ve, sigma).double()
        eps = (x_ve - x0) / sigma.view(view)
        if prediction == "epsilon":
            out = eps
        elif prediction == "v_prediction":
            out = alpha * eps - (sigma.view(view) * alpha) * x0
        else:
            out = x0
        return out.to(x_t.dtype)

    return net


def ddpm_alphas_cumprod(
    steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """``alphas_cumprod`` of the linear DDPM schedule (float64)."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def sd_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """``alphas_cumprod`` of Stable Diffusion's 'scaled_linear' schedule (float64)."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)

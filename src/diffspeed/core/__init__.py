"""The denoiser contract, its adapters and classifier-free guidance."""

from diffspeed.core.adapters import (
    ContinuousVPDenoiser,
    DiscreteVPDenoiser,
    EDMDenoiser,
    VEDenoiser,
    cosine_alpha_sigma,
    from_diffusers,
    vp_continuous,
    wrap,
)
from diffspeed.core.denoiser import Denoiser
from diffspeed.core.guidance import GuidedDenoiser, guidance

__all__ = [
    "ContinuousVPDenoiser",
    "Denoiser",
    "DiscreteVPDenoiser",
    "EDMDenoiser",
    "GuidedDenoiser",
    "VEDenoiser",
    "cosine_alpha_sigma",
    "from_diffusers",
    "guidance",
    "vp_continuous",
    "wrap",
]

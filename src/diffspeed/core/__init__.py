"""The denoiser contract, its adapters and classifier-free guidance."""

from diffspeed.core.adapters import (
    ContinuousVPDenoiser,
    DiscreteVPDenoiser,
    EDMDenoiser,
    VEDenoiser,
    cosine_alpha_sigma,
    from_diffusers,
    infer_cond_spec,
    vp_continuous,
    wrap,
)
from diffspeed.core.contract import (
    UNDECLARED,
    CondSpec,
    DenoiserLike,
    check_inputs,
    innermost,
    network_of,
)
from diffspeed.core.denoiser import Denoiser
from diffspeed.core.guidance import GuidedDenoiser, guidance

__all__ = [
    "UNDECLARED",
    "CondSpec",
    "ContinuousVPDenoiser",
    "Denoiser",
    "DenoiserLike",
    "DiscreteVPDenoiser",
    "EDMDenoiser",
    "GuidedDenoiser",
    "VEDenoiser",
    "check_inputs",
    "cosine_alpha_sigma",
    "from_diffusers",
    "guidance",
    "infer_cond_spec",
    "innermost",
    "network_of",
    "vp_continuous",
    "wrap",
]

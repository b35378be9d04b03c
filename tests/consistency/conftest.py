"""Tiny models for the consistency tests (no trained weights needed)."""

import pytest
import torch

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.models.teacher import digits_cond_spec
from diffspeed.toy import ddpm_alphas_cumprod

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "num_class_embeds": 11,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**TINY_UNET).eval()


@pytest.fixture
def tiny_teacher() -> DiscreteVPDenoiser:
    """A randomly initialised class-conditional discrete VP denoiser (null label 10)."""
    den = DiscreteVPDenoiser(tiny_unet().requires_grad_(False), ddpm_alphas_cumprod())
    den.cond_spec = digits_cond_spec(10)
    return den

"""Tiny teachers and students for fast distillation tests (exact toy denoisers, tiny UNets)."""

import torch
from torch import nn

from diffspeed.core.adapters import DiscreteVPDenoiser
from diffspeed.models.teacher import digits_cond_spec
from diffspeed.toy import ddpm_alphas_cumprod

AC = ddpm_alphas_cumprod()
NULL = 10

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "num_class_embeds": 11,
    "norm_num_groups": 4,
}


def tiny_unet(seed: int = 0) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**TINY_UNET)


class ClassToyEps(nn.Module):
    """Exact eps network of per-class Gaussian data ``N(mu_y, s^2)`` (``mu_null = 0``)."""

    def __init__(self, s: float = 0.5) -> None:
        super().__init__()
        self.s = s
        ac = AC.double()
        self.register_buffer("log_sig", torch.sqrt((1 - ac) / ac).log())

    def forward(self, x_t, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        lo = t.floor().long().clamp(0, self.log_sig.numel() - 2)
        w = t - lo
        sigma = ((1 - w) * self.log_sig[lo] + w * self.log_sig[lo + 1]).exp().view(-1, 1, 1, 1)
        y = torch.zeros(x_t.shape[0]) if class_labels is None else class_labels.double()
        mu = torch.where(y == NULL, 0.0, (y - 4.5) / 5).view(-1, 1, 1, 1)
        x_ve = x_t.double() * torch.sqrt(1 + sigma**2)
        x0 = mu + self.s**2 / (self.s**2 + sigma**2) * (x_ve - mu)
        return ((x_ve - x0) / sigma).to(x_t.dtype)


def toy_teacher() -> DiscreteVPDenoiser:
    den = DiscreteVPDenoiser(ClassToyEps(), AC, "epsilon")
    den.cond_spec = digits_cond_spec(NULL)
    return den


def toy_data(n: int = 256):
    from diffspeed.distill import TrainData

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x0 = ((y.double() - 4.5) / 5).view(-1, 1, 1, 1) + 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    return TrainData(x0.float(), {"class_labels": y})

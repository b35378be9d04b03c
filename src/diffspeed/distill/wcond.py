"""A guidance-scale-conditioned UNet: one forward gives the classifier-free-guided output.

Meng et al. 2023 ("On Distillation of Guided Diffusion Models", sec. 4.1) and LCM (Luo et al.
2023, sec. 4.2) condition the student on the guidance weight ``w``: an embedding of ``w`` is
added to the time embedding, so ``net(x, t, y, w)`` can learn
``eps_w = eps(x|null) + w * (eps(x|y) - eps(x|null))`` for every ``w`` in a trained range.

:class:`WCondUNet` wraps a diffusers ``UNet2DModel`` with a class embedding. It swaps the
UNet's class embedding for :class:`LabelAndScaleEmbedding`, which adds
``MLP(sinusoidal(w))`` to the label embedding (the UNet adds that sum to the time embedding).
The MLP's last layer starts at zero, so a freshly built wrapper computes exactly what the
wrapped UNet computes for every ``w`` (the student starts as the teacher).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffspeed.errors import ConfigError, ShapeError, UnsupportedModelError

#: ``kind`` recorded in the JSON config of a saved :class:`WCondUNet`.
KIND = "wcond_unet"


@dataclass(frozen=True)
class WEmbedConfig:
    """The guidance-scale embedding.

    Attributes:
        dim: sinusoidal feature size (even).
        scale: ``w`` is multiplied by this before the sinusoids (LCM uses 1000, like a
            timestep, so that scales 1 apart get well-separated features).
        max_period: longest period of the sinusoids (as in diffusers' timestep embedding).
    """

    dim: int = 64
    scale: float = 1000.0
    max_period: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim < 2 or self.dim % 2:
            raise ConfigError(f"WEmbedConfig.dim must be an even number >= 2, got {self.dim}")


def guidance_scale_embedding(w: torch.Tensor, cfg: WEmbedConfig) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of guidance scales ``w [B]`` (LCM, Luo et al. 2023).

    ``[sin(s w f_k), cos(s w f_k)]`` with ``f_k = max_period ** (-k / (dim/2 - 1))``.
    """
    half = cfg.dim // 2
    freqs = torch.exp(
        -math.log(cfg.max_period)
        * torch.arange(half, dtype=torch.float64, device=w.device)
        / max(1, half - 1)
    )
    arg = (w.double() * cfg.scale)[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1).float()


class LabelAndScaleEmbedding(nn.Module):
    """Replaces a UNet's class embedding: ``E[y] + MLP(sinusoidal(w))``.

    Its input is the ``[B, 2]`` float tensor ``(label, w)`` that :class:`WCondUNet` packs and
    passes to the UNet as ``class_labels`` (the UNet adds the result to the time embedding).
    """

    def __init__(self, labels: nn.Embedding, cfg: WEmbedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.labels = labels
        width = labels.embedding_dim
        self.w_mlp = nn.Sequential(nn.Linear(cfg.dim, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.w_mlp[2].weight)  # zero output: starts equal to the plain UNet
        nn.init.zeros_(self.w_mlp[2].bias)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """Embedding ``[B, width]`` of ``packed = stack([label, w], 1)`` (``[B, 2]``)."""
        label, w = packed[:, 0].round().long(), packed[:, 1]
        feats = guidance_scale_embedding(w, self.cfg).to(self.w_mlp[0].weight.dtype)
        return self.labels(label) + self.w_mlp(feats)


class WCondUNet(nn.Module):
    """A class-conditional diffusers ``UNet2DModel`` that also takes the guidance scale.

    ``forward(x, t, class_labels, guidance_scale) -> eps/v/x0 tensor`` (whatever the UNet was
    trained to predict), with ``x [B, C, H, W]``, ``t [B]`` (float timesteps),
    ``class_labels [B]`` (ints; the null label too) and ``guidance_scale`` a float or ``[B]``.
    Wrap it as a denoiser like the UNet itself (e.g. ``DiscreteVPDenoiser(wcond, ac)``) and
    pass ``cond={"class_labels": y, "guidance_scale": w}``.

    Args:
        unet: a ``UNet2DModel`` with ``num_class_embeds`` set (its class ``nn.Embedding`` is
            kept; a copy is not made - pass ``copy.deepcopy(teacher_unet)`` to keep the teacher).
        embed: the guidance-scale embedding settings.
    """

    def __init__(self, unet: nn.Module, embed: WEmbedConfig | None = None) -> None:
        super().__init__()
        labels = getattr(unet, "class_embedding", None)
        if not isinstance(labels, nn.Embedding):
            raise UnsupportedModelError(
                "a guidance-scale-conditioned student needs a diffusers UNet2DModel with a class "
                "embedding (num_class_embeds set, class_embed_type None); for other models "
                "distil one guidance scale (LCM w_range=(w, w), or LCM-LoRA)"
            )
        self.embed_config = embed or WEmbedConfig()
        unet.class_embedding = LabelAndScaleEmbedding(labels, self.embed_config)
        self.unet = unet

    @property
    def unet_config(self) -> dict[str, Any]:
        """The wrapped UNet's diffusers config (JSON-able)."""
        return {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}

    def config(self) -> dict[str, Any]:
        """JSON config that :func:`build_wcond` rebuilds the architecture from."""
        return {"kind": KIND, "unet": self.unet_config, "w_embed": asdict(self.embed_config)}

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor,
        guidance_scale: torch.Tensor | float,
    ) -> torch.Tensor:
        """The network output for images ``x`` at timesteps ``t``, labels and scales ``w``."""
        b = x.shape[0]
        w = torch.as_tensor(guidance_scale, device=x.device, dtype=torch.float32)
        w = w.expand(b) if w.ndim == 0 else w
        if w.shape != (b,) or torch.as_tensor(class_labels).shape != (b,):
            raise ShapeError(
                f"class_labels and guidance_scale must be [B]={b} (a scalar scale is fine), got "
                f"{tuple(torch.as_tensor(class_labels).shape)} and {tuple(w.shape)}"
            )
        packed = torch.stack([torch.as_tensor(class_labels, device=x.device).float(), w], 1)
        return self.unet(x, t, class_labels=packed).sample


def build_wcond(config: dict[str, Any]) -> WCondUNet:
    """A freshly initialised :class:`WCondUNet` from :meth:`WCondUNet.config` output."""
    from diffusers import UNet2DModel

    if config.get("kind") != KIND:
        raise ConfigError(f"config kind {config.get('kind')!r} is not {KIND!r}")
    return WCondUNet(UNet2DModel(**config["unet"]), WEmbedConfig(**config["w_embed"]))

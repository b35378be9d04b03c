"""A style fine-tune of mini-sd: the 'other model' an LCM-LoRA trained on mini-sd is plugged into.

The fine-tune continues mini-sd's denoising training on one stroke style's images only, with
captions that name the style or none ("a handwritten seven" learns to mean a thick seven), as a
user's style fine-tune of Stable Diffusion does. It is written as a whole diffusers pipeline
folder (the autoencoder, text encoder and tokenizer are mini-sd's), and is scored against its
style's real images (:func:`style_reference`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from diffspeed.atomic import atomic_dir
from diffspeed.errors import unknown_name
from diffspeed.models.minisd import data as msd
from diffspeed.models.minisd.quality import load_pipeline, mini_sd_denoiser


def style_reference(style: str) -> np.ndarray:
    """Classifier features of the style's real images pooled to 8x8 (the FDD reference)."""
    from diffspeed.eval.metrics import features

    if style not in msd.STYLES:
        raise unknown_name("mini-sd style", style, msd.STYLES)
    x, _, s = msd.dataset()
    return features(msd.pool_to_8x8(x[s == msd.STYLES.index(style)]))


def style_data(pipe, den, style: str, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Scaled latents of the style's images and one caption each: the style's own caption or a
    plain one (half each, drawn with ``seed``)."""
    x, y, s = msd.dataset()
    keep = s == msd.STYLES.index(style)
    x, y = x[keep], y[keep]
    with torch.no_grad():
        z = torch.cat([pipe.vae.encode(b).latent_dist.mean for b in x.split(512)])
    gen = torch.Generator().manual_seed(seed)
    plain = torch.rand(len(y), generator=gen) < 0.5
    styles = torch.where(plain, 0, msd.STYLES.index(style))
    captions = msd.random_captions(y, styles, gen)
    return z * pipe.vae.config.scaling_factor, {"encoder_hidden_states": den.prompts(captions)}


def finetune_mini_sd(
    out: str | Path,
    *,
    style: str = "thick",
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-4,
    dropout: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Fine-tune mini-sd's UNet on ``style`` (eps-MSE, caption dropout ``dropout`` to the empty
    prompt, AdamW cosine, EMA 0.99 exported); writes the pipeline folder ``out`` (the run's
    checkpoints in ``<out>.run/``, resumable) and returns it."""
    from diffspeed.core.contract import network_of
    from diffspeed.distill.finetune import DenoisingLoss
    from diffspeed.distill.trainer import TrainConfig, TrainData, train

    if style not in msd.STYLES:
        raise unknown_name("mini-sd style", style, msd.STYLES)
    out = Path(out)
    pipe = load_pipeline()
    den = mini_sd_denoiser(pipe)
    x0, cond = style_data(pipe, den, style, seed)
    unet = network_of(den)
    loss = DenoisingLoss(dropout, pipe.scheduler.alphas_cumprod, den.cond_spec)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(50, steps // 10),
                         ema_decay=0.99, checkpoint_every=100, log_every=25, seed=seed)  # fmt: skip
    result = train(
        copy.deepcopy(unet).requires_grad_(True),
        loss,
        config,
        out.with_name(out.name + ".run"),
        data=TrainData(x0, cond),
        run_info={"style": style, "dropout": dropout},
        progress=progress,
    )
    pipe.unet = result.best.requires_grad_(False)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out

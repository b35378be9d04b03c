"""``diffspeed train-mini-sd``: train mini-sd, a tiny Stable Diffusion, on this CPU.

Three stages, each resumable from its checkpoint in ``<out>/checkpoints/``:

1. **Text encoder** (``CLIPTextModel``, 2 layers, width 64) and **tokenizer** (one token per
   caption word, :mod:`~diffspeed.models.minisd.tokenizer`). The encoder keeps its seeded random
   initialisation and stays **frozen**: the UNet's cross-attention learns to read any fixed,
   distinct embedding of a prompt; a frozen encoder lets every caption's embeddings be computed
   once for the whole run (condition caching), and the empty prompt is a fixed unconditional
   input, as in Stable Diffusion.
2. **AutoencoderKL** (4 latent channels at 8x8 for 32x32 images): reconstruction MSE plus a
   small KL term. Its ``scaling_factor`` is set to ``1 / std`` of the latents, as in SD.
3. **UNet2DConditionModel** in Stable Diffusion's layout (cross-attention down/up blocks, a
   cross-attention mid block) on the latents: eps prediction on the scaled-linear 1000-step
   schedule, 10 % of captions dropped to the empty prompt (classifier-free guidance), EMA.

The output folder is a diffusers ``StableDiffusionPipeline`` (safetensors weights, a
``DDIMScheduler`` config) that ``from_pretrained`` loads offline.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffspeed.errors import ConfigError
from diffspeed.models.io import atomic_write_json
from diffspeed.models.minisd import data as msd
from diffspeed.models.minisd.tokenizer import MAX_LENGTH, save_tokenizer
from diffspeed.models.teacher import load_train_state, save_train_state

log = logging.getLogger("diffspeed")

#: diffusers ``AutoencoderKL`` kwargs.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [32, 32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 32,
}

#: diffusers ``UNet2DConditionModel`` kwargs (Stable Diffusion's block layout, two levels of
#: cross-attention and a cross-attention mid block).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}

#: ``transformers.CLIPTextConfig`` kwargs (the vocabulary size is the tokenizer's).
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_LENGTH,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}

#: Stable Diffusion 1.x's training schedule (diffusers scheduler kwargs).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "set_alpha_to_one": True,
    "clip_sample": False,
    "steps_offset": 1,
}


@dataclass(frozen=True)
class MiniSDTraining:
    """Settings of ``diffspeed train-mini-sd`` (the shipped weights used these defaults)."""

    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    unet_steps: int = 3000
    unet_batch: int = 128
    unet_lr: float = 1e-3
    warmup: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    max_shift: int = 2
    seed: int = 0
    checkpoint_every: int = 250


def _cosine_lr(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def build_text_encoder(vocab_size: int, seed: int) -> torch.nn.Module:
    """The frozen text encoder: seeded random initialisation, eval mode, no gradients."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **TEXT_CONFIG))
    return model.eval().requires_grad_(False)


def prompt_table(tokenizer: Any, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Embeddings ``[len(prompts), MAX_LENGTH, width]`` as the pipeline computes them."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def latent_bank(
    vae: torch.nn.Module, images: torch.Tensor, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every image at every integer shift up to
    ``max_shift``: ``[S, N, 4, 8, 8]`` each, shift 0 first. Encoding once here spares the UNet
    stage an encoder pass per step; it samples ``mean + std * noise`` from the bank."""
    shifts = [(0, 0)] + [
        (a, b)
        for a in range(-max_shift, max_shift + 1)
        for b in range(-max_shift, max_shift + 1)
        if (a, b) != (0, 0)
    ]
    means, stds = [], []
    with torch.no_grad():
        for a, b in shifts:
            moved = msd.translate(images, a, b)
            post = [vae.encode(part).latent_dist for part in moved.split(512)]
            means.append(torch.cat([p.mean for p in post]))
            stds.append(torch.cat([p.std for p in post]))
    return torch.stack(means), torch.stack(stds)


def _loop(
    state_file: Path,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    steps: int,
    lr: float,
    warmup: int,
    ema_decay: float,
    every: int,
    gen: torch.Generator,
    loss_at: Callable[[torch.nn.Module, torch.Generator], torch.Tensor],
    name: str,
    progress: bool,
) -> None:
    """A resumable AdamW + cosine + EMA loop; checkpoints every ``every`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    step = 0
    if state_file.is_file():
        step = load_train_state(state_file, model, ema, opt, gen)
        log.info("resumed %s training at step %d", name, step)
    t0, first = time.time(), step
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, warmup)
        loss = loss_at(model, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {name} loss at step {step}; checkpoint kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - ema_decay)
        step += 1
        if step % every == 0 or step == steps:
            save_train_state(state_file, model, ema, opt, gen, step)
            rate = (step - first) / max(1e-9, time.time() - t0)
            msg = f"{name} step {step}/{steps} loss {loss.item():.4f} ({rate:.2f} it/s)"
            log.info(msg)
            if progress:
                print(msg, flush=True)


def train_mini_sd(
    out: str | Path,
    cfg: MiniSDTraining = MiniSDTraining(),
    *,
    progress: bool = False,
) -> Path:
    """Train mini-sd into the pipeline folder ``out`` (resuming from ``out/checkpoints``).

    Returns ``out``, which ``StableDiffusionPipeline.from_pretrained(out)`` loads offline.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    if min(cfg.vae_steps, cfg.unet_steps, cfg.vae_batch, cfg.unet_batch) < 1:
        raise ConfigError("train-mini-sd needs steps and batch sizes >= 1")
    out = Path(out)
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out / "tokenizer", msd.all_captions())
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text_encoder = build_text_encoder(len(tokenizer), cfg.seed)
    images, labels, styles = msd.dataset()

    # stage 2: the autoencoder
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    vae_ema = copy.deepcopy(vae).requires_grad_(False)

    def vae_loss(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)
        x = msd.shift(images[idx], gen, cfg.max_shift)
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        kl = post.kl().mean() / z[0].numel()  # per latent element
        return F.mse_loss(model.decode(z).sample, x) + cfg.kl_weight * kl

    gen = torch.Generator().manual_seed(cfg.seed)
    _loop(ckpt / "vae.safetensors", vae, vae_ema, cfg.vae_steps, cfg.vae_lr, cfg.warmup,
          cfg.ema_decay, cfg.checkpoint_every, gen, vae_loss, "vae", progress)  # fmt: skip
    vae = vae_ema.eval()
    mean, std = latent_bank(vae, images, cfg.max_shift)
    scale = float(1 / mean[0].std())  # of the unshifted images' latents
    vae.register_to_config(scaling_factor=scale)

    # stage 3: the UNet on scaled latents of shifted images, captions from the table
    prompts = ["", *msd.all_captions()]
    table = prompt_table(tokenizer, text_encoder, prompts)
    index = {p: i for i, p in enumerate(prompts)}
    ac = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.float()
    torch.manual_seed(cfg.seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    unet_ema = copy.deepcopy(unet).requires_grad_(False)

    def unet_loss(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        b = cfg.unet_batch
        idx = torch.randint(0, len(images), (b,), generator=gen)
        caps = msd.random_captions(labels[idx], styles[idx], gen)
        drop = (torch.rand(b, generator=gen) < cfg.caption_dropout).tolist()
        emb = table[[0 if d else index[c] for c, d in zip(caps, drop, strict=True)]]
        k = torch.randint(0, len(mean), (b,), generator=gen)  # which shift of each image
        z = (mean[k, idx] + std[k, idx] * torch.randn(mean[k, idx].shape, generator=gen)) * scale
        t = torch.randint(0, ac.numel(), (b,), generator=gen)
        eps = torch.randn(z.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * eps
        return F.mse_loss(model(zt, t, encoder_hidden_states=emb).sample, eps)

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    _loop(ckpt / "unet.safetensors", unet, unet_ema, cfg.unet_steps, cfg.unet_lr, cfg.warmup,
          cfg.ema_decay, cfg.checkpoint_every, gen, unet_loss, "unet", progress)  # fmt: skip
    _export(out, unet_ema.eval(), vae, text_encoder, tokenizer, cfg)
    return out


def _export(out: Path, unet, vae, text_encoder, tokenizer, cfg: MiniSDTraining) -> None:
    """Write the pipeline folder (safetensors only) next to the checkpoints."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    staging = out / ".export"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for part in sorted(p.name for p in staging.iterdir()):
        target = out / part
        if target.is_dir():
            shutil.rmtree(target)
        (staging / part).rename(target)
    staging.rmdir()
    atomic_write_json(out / "training.json", asdict(cfg))

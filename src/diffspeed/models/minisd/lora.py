"""mini-sd's LCM-LoRA: an LCM-LoRA distilled from mini-sd with ``diffspeed.distill`` and shipped
in the diffusers LoRA format, so a plain ``StableDiffusionPipeline`` takes it with
``pipe.load_lora_weights(mini_sd_lcm_lora_path())`` and samples with diffusers' ``LCMScheduler``
(guidance baked in: call the pipeline with ``guidance_scale=1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffspeed.models.minisd import data as msd
from diffspeed.models.minisd.quality import load_pipeline, mini_sd_denoiser, mini_sd_path

#: The guidance scale the shipped adapter bakes in (mini-sd's recommended scale).
GUIDANCE = 7.5


def mini_sd_lcm_lora_path() -> Path:
    """The shipped LCM-LoRA folder of mini-sd (``pipe.load_lora_weights`` takes it)."""
    return mini_sd_path().parent / "mini-sd-lcm-lora"


def lcm_lora_data(pipe: Any, den: Any, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Training pairs: scaled latents (posterior means) of every styled digit and the
    embeddings of one caption per image (drawn with ``seed``)."""
    x, y, s = msd.dataset()
    with torch.no_grad():
        z = torch.cat([pipe.vae.encode(b).latent_dist.mean for b in x.split(512)])
    captions = msd.random_captions(y, s, torch.Generator().manual_seed(seed))
    return z * pipe.vae.config.scaling_factor, {"encoder_hidden_states": den.prompts(captions)}


def train_lcm_lora(
    out: str | Path, *, steps: int = 2000, rank: int = 8, lr: float = 1e-3, seed: int = 0
) -> Path:
    """Distil mini-sd's LCM-LoRA into ``out`` (resumable); returns the adapter folder.

    The LCM loss on mini-sd's guided teacher (w = :data:`GUIDANCE`, DDIM between the points of
    LCM's 50-point grid over the whole noise range), batch 64, AdamW with a cosine schedule.
    """
    from diffspeed.distill import LCMLoRA, TrainConfig, distill

    pipe = load_pipeline()
    den = mini_sd_denoiser(pipe)
    cfg = LCMLoRA(k=20, strength=1.0, guidance=GUIDANCE, rank=rank)
    train = TrainConfig(steps=steps, batch_size=64, lr=lr, warmup=50, checkpoint_every=250,
                        log_every=50, seed=seed)  # fmt: skip
    return distill(den, cfg, train=train, out=out, data=lcm_lora_data(pipe, den, seed))

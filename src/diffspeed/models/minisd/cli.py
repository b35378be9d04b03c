"""``diffspeed train-mini-sd``: train the embedded tiny Stable Diffusion (options from
:class:`~diffspeed.models.minisd.train.MiniSDTraining`'s fields)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

#: What each training field means (the ``--help`` text).
HELP = {
    "vae_steps": "autoencoder optimisation steps",
    "vae_batch": "autoencoder batch size",
    "vae_lr": "autoencoder peak learning rate (AdamW, cosine)",
    "kl_weight": "weight of the autoencoder's KL term (per latent element)",
    "unet_steps": "UNet optimisation steps",
    "unet_batch": "UNet batch size",
    "unet_lr": "UNet peak learning rate (AdamW, cosine)",
    "warmup": "linear warm-up steps of both stages",
    "ema_decay": "EMA decay of the exported weights",
    "caption_dropout": "fraction of captions replaced by the empty prompt (for guidance)",
    "max_shift": "largest random translation of the training images, in pixels",
    "seed": "seed of initialisation and data order",
    "checkpoint_every": "steps between resumable checkpoints",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train-mini-sd``."""
    from diffspeed.models.minisd.train import MiniSDTraining

    p = sub.add_parser(
        "train-mini-sd",
        help="train mini-sd, the embedded tiny Stable Diffusion (CPU, resumable)",
        description="Train mini-sd's autoencoder and UNet (the text encoder stays frozen) into "
        "a diffusers StableDiffusionPipeline folder; an interrupted run resumes from its "
        "checkpoints.",
        epilog="example: diffspeed train-mini-sd --out runs/mini-sd",
    )
    p.add_argument("--out", type=Path, default=Path("runs/mini-sd"), help="pipeline folder")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    for f in dataclasses.fields(MiniSDTraining):
        p.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
            help=HELP[f.name],
        )  # fmt: skip
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "train-mini-sd-lcm-lora",
        help="distil mini-sd's LCM-LoRA (CPU, resumable)",
        description="Distil an LCM-LoRA from mini-sd with diffspeed.distill (guidance 7.5 baked "
        "in) and write it in the diffusers LoRA format: pipe.load_lora_weights(OUT/lora), then "
        "sample with LCMScheduler at guidance_scale=1.",
        epilog="example: diffspeed train-mini-sd-lcm-lora --out runs/mini-sd-lcm-lora",
    )
    p.add_argument("--out", type=Path, default=Path("runs/mini-sd-lcm-lora"), help="run folder")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps (batch 64)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the captions and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_train_lora)


def _train(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.models.minisd.train import MiniSDTraining, train_mini_sd

    torch.set_num_threads(args.threads)
    names = [f.name for f in dataclasses.fields(MiniSDTraining)]
    cfg = MiniSDTraining(**{n: getattr(args, n) for n in names})
    out = train_mini_sd(args.out, cfg, progress=True)
    print(f"wrote {out} (load it with StableDiffusionPipeline.from_pretrained)")
    return 0


def _train_lora(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.models.minisd.lora import train_lcm_lora

    torch.set_num_threads(args.threads)
    path = train_lcm_lora(args.out, steps=args.steps, rank=args.rank, lr=args.lr, seed=args.seed)
    print(f"wrote {path} (pipe.load_lora_weights it; sample with LCMScheduler, guidance_scale=1)")
    return 0

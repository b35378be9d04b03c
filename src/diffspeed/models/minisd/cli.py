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

    p = sub.add_parser(
        "train-mini-sd-student",
        help="distil mini-sd into a few-step student (progressive, CPU, resumable)",
        description="Progressive distillation of mini-sd with its guidance (7.5) baked in, "
        "through diffspeed.distill; each round's student is also written as a diffusers "
        "pipeline folder (v prediction, trailing DDIM): sample it with guidance_scale=1 and "
        "the round's step count.",
        epilog="example: diffspeed train-mini-sd-student --out runs/mini-sd-student",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/mini-sd-student"), help="run folder")
    p.add_argument("--teacher-steps", type=int, default=16, help="DDIM steps of the first teacher")
    p.add_argument("--final-steps", type=int, default=4, help="steps of the last student")
    p.add_argument(
        "--steps", default="500,700", help="optimisation steps per round, comma-separated"
    )
    p.add_argument(
        "--substeps",
        type=int,
        default=1,
        help="first round: second-order substeps per teacher half step (1: two DDIM steps)",
    )
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW, cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the captions and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--ship", action="store_true", help="store the final student (int8) in the package"
    )
    p.set_defaults(func=_train_student)

    p = sub.add_parser(
        "train-mini-sd-finetune",
        help="fine-tune mini-sd on one stroke style (the LoRA-transfer test model)",
        description="Continue mini-sd's denoising training on one style's images only, with "
        "captions that name the style or none, into a diffusers pipeline folder (resumable).",
        epilog="example: diffspeed train-mini-sd-finetune --style thick --out runs/mini-sd-thick",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/mini-sd-thick"), help="pipeline folder")
    p.add_argument("--style", default="thick", help="one of: regular, thin, thick")
    p.add_argument("--steps", type=int, default=800, help="optimisation steps (batch 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW, cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the captions and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_train_finetune)


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


def _train_student(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.errors import ConfigError
    from diffspeed.models.minisd.student import export_pipeline, train_student

    try:
        steps = tuple(int(v) for v in args.steps.split(","))
    except ValueError:
        raise ConfigError(
            f"--steps must be integers separated by commas, got {args.steps!r}"
        ) from None
    torch.set_num_threads(args.threads)
    final = train_student(
        args.out, teacher_steps=args.teacher_steps, final_steps=args.final_steps, steps=steps,
        lr=args.lr, substeps=args.substeps, seed=args.seed, progress=True,
    )  # fmt: skip
    for student in sorted(Path(args.out).glob("round-*/student.safetensors")):
        n = student.parent.name.split("-")[1]
        folder = export_pipeline(student, Path(args.out) / f"pipeline-{n}")
        print(f"wrote {folder} (sample with num_inference_steps={n}, guidance_scale=1)")
    print(f"final student: {final}")
    if args.ship:
        from diffspeed.models.minisd.student import ship_student

        print(f"shipped {ship_student(final)}")
    return 0


def _train_finetune(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.models.minisd.finetune import finetune_mini_sd

    torch.set_num_threads(args.threads)
    out = finetune_mini_sd(args.out, style=args.style, steps=args.steps, lr=args.lr,
                           seed=args.seed, progress=True)  # fmt: skip
    print(f"wrote {out} (load it with StableDiffusionPipeline.from_pretrained)")
    return 0

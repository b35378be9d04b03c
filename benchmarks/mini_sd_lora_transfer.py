"""Does mini-sd's LCM-LoRA accelerate a style fine-tune of mini-sd it was never trained on?

The fine-tune (``diffspeed train-mini-sd-finetune --style thick``) draws thick strokes for plain
prompts. Everything is scored against the *style's* real images (pooled to 8x8; FDD and class
accuracy), on seeds 0 .. n-1 with plain prompts ("a handwritten <digit word>", digit = seed % 10):

* the fine-tune's reference: Heun 100 Karras at w = 7.5;
* the fine-tune + the shipped LCM-LoRA (``load_lora_weights``, diffusers' ``LCMScheduler``,
  guidance 1) at 2, 4 and 8 steps: the transfer;
* the fine-tune with DDIM trailing at w = 7.5 at the same step counts (no adapter);
* mini-sd + the LoRA at 4 steps, scored against the style: how far the two models are apart.

    python benchmarks/mini_sd_lora_transfer.py runs/mini-sd-thick \
        --out docs/results/mini_sd_lora_transfer.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from diffspeed.eval import metrics
from diffspeed.integrations.diffusers import Scheduler
from diffspeed.models.minisd import data as msd
from diffspeed.models.minisd.finetune import style_reference
from diffspeed.models.minisd.lora import GUIDANCE, mini_sd_lcm_lora_path
from diffspeed.models.minisd.quality import Samples, generate, load_pipeline
from diffspeed.models.minisd.quality import reference as reference_samples


def score(samples: Samples, reference) -> dict[str, float]:
    """FDD against the style's images, class accuracy and mean stroke mass."""
    pooled = msd.pool_to_8x8(samples.images)
    return {
        "fdd": metrics.fdd(pooled, reference),
        "accuracy": metrics.class_accuracy(pooled, samples.digits),
        "mass": float(msd.stroke_mass(samples.images).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("finetune", type=Path, help="the fine-tuned pipeline folder")
    ap.add_argument("--style", default="thick", help="the style it was fine-tuned on")
    ap.add_argument("--n", type=int, default=1000, help="report samples (seeds 0..n-1)")
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--lora", type=Path, default=None, help="adapter folder (default: shipped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import LCMScheduler

    seeds, lora = range(args.n), str(args.lora or mini_sd_lcm_lora_path())
    reference = style_reference(args.style)
    pipe = load_pipeline(args.finetune)
    config = pipe.scheduler.config
    ref = score(reference_samples(pipe, seeds, guidance=GUIDANCE), reference)
    lines = [
        f"mini-sd LCM-LoRA on a {args.style} fine-tune, {args.n} samples (plain prompts), scored "
        f"against the {args.style} digits; {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f} at start",
        "",
        "| model | sampler | steps | FDD | / fine-tune reference | accuracy | stroke mass |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def row(model: str, sampler: str, steps: int, s: dict[str, float]) -> None:
        line = (
            f"| {model} | {sampler} | {steps} | {s['fdd']:.4f} | {s['fdd'] / ref['fdd']:.3f} "
            f"| {s['accuracy']:.4f} | {s['mass']:.4f} |"
        )
        lines.append(line)
        print(line, flush=True)

    print("\n".join(lines), flush=True)
    row("fine-tune", f"Heun Karras, w = {GUIDANCE} (reference)", 100, ref)
    pipe.scheduler = Scheduler.from_config(config, solver="ddim", schedule="trailing")
    for n in args.steps:
        row("fine-tune", f"DDIM trailing, w = {GUIDANCE}", n,
            score(generate(pipe, seeds, steps=n, guidance=GUIDANCE), reference))  # fmt: skip
    pipe.load_lora_weights(lora)
    pipe.scheduler = LCMScheduler.from_config(config)
    for n in args.steps:
        row("fine-tune + mini-sd's LCM-LoRA", "LCMScheduler, w = 1", n,
            score(generate(pipe, seeds, steps=n, guidance=1.0), reference))  # fmt: skip
    base = load_pipeline()
    base.load_lora_weights(lora)
    base.scheduler = LCMScheduler.from_config(config)
    row("mini-sd + LCM-LoRA (not fine-tuned)", "LCMScheduler, w = 1", 4,
        score(generate(base, seeds, steps=4, guidance=1.0), reference))  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

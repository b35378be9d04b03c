"""mini-sd's LCM-LoRA through plain diffusers: ``load_lora_weights`` + ``LCMScheduler``.

Report set: seeds 0 .. n-1 (digit = seed % 10, prompt "a handwritten <digit word>"), scored as in
``mini_sd_quality.py`` (images pooled to 8x8: FDD against the real digits, class accuracy). The
reference is mini-sd's Heun 100 Karras steps at w = 7.5 on the same seeds, computed in the same
run; the adapter samples at guidance 1 (its teacher's w = 7.5 is baked in). DDIM on the plain
model at the same step counts (w = 7.5) is the baseline without the adapter.

    python benchmarks/mini_sd_lcm_lora.py --out docs/results/mini_sd_lcm_lora.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from diffspeed.integrations.diffusers import Scheduler
from diffspeed.models.minisd.lora import GUIDANCE, mini_sd_lcm_lora_path
from diffspeed.models.minisd.quality import generate, load_pipeline, reference, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--lora", type=Path, default=None, help="adapter folder (default: shipped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import LCMScheduler

    seeds = range(args.n)
    pipe = load_pipeline()
    config = pipe.scheduler.config
    ref = score(reference(pipe, seeds, guidance=GUIDANCE))
    lines = [
        f"mini-sd LCM-LoRA, {args.n} report samples, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f} at start; reference (Heun 100 Karras, w = {GUIDANCE}) FDD "
        f"{ref['fdd']:.4f}, accuracy {ref['accuracy']:.4f}",
        "",
        "| steps | LCM-LoRA + LCMScheduler FDD | / reference | accuracy | DDIM (no adapter) FDD | "
        "/ reference | accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    rows = {}
    pipe.scheduler = Scheduler.from_config(config, solver="ddim", schedule="trailing")
    for n in args.steps:
        rows[n] = [score(generate(pipe, seeds, steps=n, guidance=GUIDANCE))]
    pipe.load_lora_weights(str(args.lora or mini_sd_lcm_lora_path()))
    pipe.scheduler = LCMScheduler.from_config(config)
    for n in args.steps:
        lora = score(generate(pipe, seeds, steps=n, guidance=1.0))
        ddim = rows[n][0]
        line = (
            f"| {n} | {lora['fdd']:.4f} | {lora['fdd'] / ref['fdd']:.3f} | {lora['accuracy']:.4f} "
            f"| {ddim['fdd']:.4f} | {ddim['fdd'] / ref['fdd']:.3f} | {ddim['accuracy']:.4f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

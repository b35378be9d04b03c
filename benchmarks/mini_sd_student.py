"""mini-sd's distilled few-step students through plain diffusers.

Each student run (``diffspeed train-mini-sd-student``) is exported as a pipeline folder (v
prediction, trailing DDIM) and sampled with ``guidance_scale=1`` (the teacher's w = 7.5 is baked
in, one UNet forward per step). Report set: seeds 0 .. n-1 (digit = seed % 10, "a handwritten
<digit word>"), scored as in ``mini_sd_quality.py``. The reference is mini-sd's Heun 100 Karras
at w = 7.5 on the same seeds, and DDIM trailing at w = 7.5 (two forwards per step, cond +
uncond batched) on the plain model is the training-free baseline at the same step counts.

    python benchmarks/mini_sd_student.py runs/mini-sd-student --out docs/results/mini_sd_student.md

(The runs are searched for students after the baselines are done; wait for training to finish.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from diffspeed.integrations.diffusers import Scheduler
from diffspeed.models.minisd.lora import GUIDANCE
from diffspeed.models.minisd.quality import generate, load_pipeline, reference, score
from diffspeed.models.minisd.student import export_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="student run folders (round-N inside)")
    ap.add_argument("--n", type=int, default=1000, help="report samples (seeds 0..n-1)")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8], help="DDIM baseline steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = range(args.n)
    pipe = load_pipeline()
    config = pipe.scheduler.config
    ref = score(reference(pipe, seeds, guidance=GUIDANCE))
    lines = [
        f"mini-sd distilled students, {args.n} report samples, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f} at start; reference (Heun 100 Karras, w = {GUIDANCE}) FDD "
        f"{ref['fdd']:.4f}, accuracy {ref['accuracy']:.4f}",
        "",
        "| model | steps | UNet forwards / image | FDD | / reference | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)

    def row(name: str, steps: int, nfe: int, s: dict[str, float]) -> None:
        line = (
            f"| {name} | {steps} | {nfe} | {s['fdd']:.4f} | {s['fdd'] / ref['fdd']:.3f} "
            f"| {s['accuracy']:.4f} |"
        )
        lines.append(line)
        print(line, flush=True)

    pipe.scheduler = Scheduler.from_config(config, solver="ddim", schedule="trailing")
    for n in args.steps:
        row("mini-sd, DDIM trailing, w = 7.5", n, 2 * n,
            score(generate(pipe, seeds, steps=n, guidance=GUIDANCE)))  # fmt: skip
    for run in args.runs:  # the students found once the baselines are done
        for student in sorted(run.glob("round-*/student.safetensors")):
            n = int(student.parent.name.split("-")[1])
            spipe = load_pipeline(export_pipeline(student, run / f"pipeline-{n}"))
            row(f"{run.name} round-{n} (diffusers DDIM, v, w = 1)", n, n,
                score(generate(spipe, seeds, steps=n, guidance=1.0)))  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

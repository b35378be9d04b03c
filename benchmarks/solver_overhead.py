"""Solver overhead: sampling wall time / (NFE x one network forward), batch 256, one run.

Both timings use the same denoiser call (the teacher with its scalings), warm-up first, fixed
threads. Each repeat times one sampling run and, right after it, NFE back-to-back forwards on
the same inputs; the reported ratio is the median of the per-repeat ratios (robust to load
drift on a shared machine). 1.00 means the solver's own arithmetic is free.

    python benchmarks/solver_overhead.py --out benchmarks/results/solver_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import diffspeed
from diffspeed.models.teacher import load_teacher

SOLVERS = [("ddim", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {}), ("deis", {}),
           ("dpmpp_3s", {}), ("heun", {}), ("ipndm", {}), ("sa_solver", {"tau": 0.0})]  # fmt: skip


def paired_ratio(run, forward, nfe: int, repeats: int) -> tuple[float, float, float]:
    """Median over repeats of (run time) / (nfe forwards' time), plus the median times."""
    run()
    forward()  # warm-up
    ratios, runs, fwds = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        t_run = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(nfe):
            forward()
        t_fwd = time.perf_counter() - t
        ratios.append(t_run / t_fwd)
        runs.append(t_run)
        fwds.append(t_fwd)
    return statistics.median(ratios), statistics.median(runs), statistics.median(fwds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/solver_overhead.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = load_teacher()
    noise = diffspeed.seeded_noise(range(args.batch), den.cond_spec.sample_shape)
    cond = den.cond_spec.example_cond(args.batch)
    sigma = torch.full((args.batch,), 1.0)
    lines = [f"batch {args.batch}, {args.steps} steps, {args.threads} threads, median of "
             f"{args.repeats}", "", "| solver | NFE | sample s | NFE x forward s | ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    with torch.inference_mode():
        for name, opts in SOLVERS:
            _, info = diffspeed.sample(den, noise, name, args.steps, "karras", cond=cond,
                                       return_info=True, **opts)  # fmt: skip
            nfe = info["nfe"]
            ratio, run, fwd = paired_ratio(
                lambda n=name, o=opts: diffspeed.sample(den, noise, n, args.steps, "karras",
                                                        cond=cond, **o),
                lambda: den(noise, sigma, **cond),
                nfe,
                args.repeats,
            )  # fmt: skip
            lines.append(f"| {name} | {nfe} | {run:.4f} | {fwd:.4f} | {ratio:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

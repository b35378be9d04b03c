"""Solver overhead: sampling wall time / (NFE x one network forward), batch 256, one run.

Both timings use the same denoiser call (the teacher with its scalings), warm-up first, the
median of --repeats, fixed threads; a ratio of 1.00 means the solver's own arithmetic is free.

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


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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
    noise = diffspeed.seeded_noise(range(args.batch), (1, 8, 8))
    cond = {"class_labels": torch.arange(args.batch) % 10}
    sigma = torch.full((args.batch,), 1.0)
    lines = [f"batch {args.batch}, {args.steps} steps, {args.threads} threads, median of "
             f"{args.repeats}", "", "| solver | NFE | sample s | NFE x forward s | ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    with torch.inference_mode():
        for name, opts in SOLVERS:
            fwd = median_time(lambda: den(noise, sigma, **cond), args.repeats)
            _, info = diffspeed.sample(den, noise, name, args.steps, "karras", cond=cond,
                                       return_info=True, **opts)  # fmt: skip
            run = median_time(
                lambda n=name, o=opts: diffspeed.sample(den, noise, n, args.steps, "karras",
                                                        cond=cond, **o),
                args.repeats,
            )  # fmt: skip
            nfe = info["nfe"]
            lines.append(f"| {name} | {nfe} | {run:.4f} | {nfe * fwd:.4f} | "
                         f"{run / (nfe * fwd):.3f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Scheduler overhead: CPU time spent in ``step()`` per run, diffspeed's Scheduler vs diffusers'.

No network: every step gets the same fixed model output, so only the schedulers' own work is
timed. Both schedulers are built from one Stable Diffusion config (scaled-linear betas,
trailing spacing) and step the same ``[1, 4, 96, 96]`` latents (SDXL-sized). For each solver and
step count, the repeats alternate the two schedulers (diffspeed, diffusers, diffspeed, ...);
each repeat times one whole run of ``step()`` calls with ``time.process_time`` (CPU time of this
process), after a warm-up run of each. The ratio is the median of the per-repeat ratios.

    python benchmarks/scheduler_overhead.py --out benchmarks/results/scheduler_overhead.md
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from pathlib import Path

import diffusers
import torch

from diffspeed.integrations.diffusers import Scheduler

CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "trailing",
}  # fmt: skip

#: diffspeed solver, its options, the diffusers scheduler class with the same algorithm, its
#: options. LCM runs on LCM's own timestep grid (50 points: up to 50 steps).
PAIRS = [
    ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True}),
    ("euler", {}, "EulerDiscreteScheduler", {}),
    ("heun", {}, "HeunDiscreteScheduler", {}),
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}),
    ("dpmpp_3m", {}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("unipc", {"order": 2}, "UniPCMultistepScheduler", {}),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
    ("deis", {}, "DEISMultistepScheduler", {"solver_order": 3}),
    ("dpmpp_2s", {}, "DPMSolverSinglestepScheduler", {"solver_order": 2}),
    ("euler_ancestral", {}, "EulerAncestralDiscreteScheduler", {}),
    ("dpmpp_2m_sde", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("plms", {}, "PNDMScheduler", {"skip_prk_steps": True}),
    ("lcm", {}, "LCMScheduler", {}),
]
SCHEDULE = {"lcm": "lcm"}
MAX_STEPS = {"lcm": 50}


def run_once(sched, steps: int, latents: torch.Tensor, out: torch.Tensor) -> float:
    """CPU seconds spent in ``scale_model_input`` + ``step`` over one run of ``steps`` steps."""
    sched.set_timesteps(steps)
    x = latents * sched.init_noise_sigma
    g = torch.Generator().manual_seed(0)
    kw = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    spent = 0.0
    for t in sched.timesteps:
        t0 = time.process_time()
        sched.scale_model_input(x, t)  # what the network would see (part of each step's work)
        x = sched.step(out, t, x, **kw).prev_sample
        spent += time.process_time() - t0
    return spent


def measure(ours, theirs, steps: int, repeats: int, latents, out) -> tuple[float, float, float]:
    """Median ratio (ours / theirs) over alternating repeats, and the median CPU seconds."""
    run_once(ours, steps, latents, out)
    run_once(theirs, steps, latents, out)
    ratios, a, b = [], [], []
    for _ in range(repeats):
        t_ours = run_once(ours, steps, latents, out)
        t_theirs = run_once(theirs, steps, latents, out)
        ratios.append(t_ours / t_theirs)
        a.append(t_ours)
        b.append(t_theirs)
    return statistics.median(ratios), statistics.median(a), statistics.median(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--shape", type=int, nargs=4, default=[1, 4, 96, 96])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(*args.shape, generator=gen)
    out = torch.randn(*args.shape, generator=gen) * 0.5
    lines = [
        f"latents {args.shape}, {args.threads} thread(s), CPU time in step() per run, median "
        f"of {args.repeats} alternating repeats; load average at start "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        "",
        "| solver | diffusers scheduler | steps | diffspeed ms | diffusers ms | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for solver, opts, cls, theirs_opts in PAIRS:
        theirs = getattr(diffusers, cls).from_config({**CONFIG, **theirs_opts})
        ours = Scheduler.from_config(
            theirs.config, solver=solver, solver_options=opts, schedule=SCHEDULE.get(solver)
        )
        label = solver + "".join(f" {k}={v}" for k, v in opts.items())
        their_label = cls + "".join(f" {k}={v}" for k, v in theirs_opts.items())
        for steps in [n for n in args.steps if n <= MAX_STEPS.get(solver, n)]:
            ratio, t_ours, t_theirs = measure(ours, theirs, steps, args.repeats, latents, out)
            line = (
                f"| {label} | {their_label} | {steps} | {t_ours * 1e3:.1f} | "
                f"{t_theirs * 1e3:.1f} | {ratio:.2f} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""1 vs 2 torch threads, on a quiet machine and beside a 2-thread matmul hog.

Each configuration runs in a fresh process: the embedded teacher's forward at batch 64 (what
training and quality batches do) and a one-image 50-step DDIM sample (what the bench times),
each ``--repeats`` times after a warm-up; wall time and process CPU time per call (median,
min, max). A configuration that does not finish within ``--timeout`` seconds is killed and
reported as such. The hog is ``benchmarks/bench_load_hog.py --threads 2``, started before and killed
after the loaded configurations.

    python benchmarks/bench_load.py --out benchmarks/results/bench_load.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(threads: int, repeats: int) -> dict:
    """Time the two workloads with ``threads`` torch threads in this process."""
    import torch

    from diffspeed.models.teacher import load_teacher
    from diffspeed.solvers import sample, seeded_noise

    torch.set_num_threads(threads)
    den = load_teacher(None)
    shape = den.cond_spec.sample_shape
    x64, c64 = seeded_noise(range(64), shape), den.cond_spec.example_cond(64)
    sigma = torch.full((64,), 1.0)
    x1, c1 = seeded_noise(range(1), shape), den.cond_spec.example_cond(1)
    jobs = {
        "forward, batch 64": lambda: den(x64, sigma, **c64),
        "ddim-50, 1 image": lambda: sample(den, x1, "ddim", 50, None, cond=c1),
    }
    out = {}
    with torch.inference_mode():
        for name, fn in jobs.items():
            fn()
            wall, cpu = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[name] = {"wall": wall, "cpu": cpu}
    return out


def _run_worker(threads: int, repeats: int, timeout: float) -> dict | None:
    """The worker's timings, or None when it did not finish within ``timeout`` seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", str(threads), "--repeats", str(repeats)]
    try:
        got = subprocess.run(
            cmd, env=env, capture_output=True, text=True, check=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    return json.loads(got.stdout.strip().splitlines()[-1])


def _ms(v: list[float]) -> str:
    return f"{1e3 * statistics.median(v):.1f} ({1e3 * min(v):.1f}-{1e3 * max(v):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per workload")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a configuration may take")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    lines = [
        "| machine | threads | workload | wall ms median (min-max) | CPU ms median | "
        "wall vs no hog |",
        "|---|---|---|---|---|---|",
    ]
    idle: dict[tuple[int, str], float] = {}
    loads = {}
    for hog in (False, True):
        proc = None
        if hog:
            proc = subprocess.Popen([sys.executable, str(HERE / "bench_load_hog.py")])
            time.sleep(3)
        try:
            for threads in (1, 2):
                t0 = time.perf_counter()
                got = _run_worker(threads, args.repeats, args.timeout)
                loads[(hog, threads)] = os.getloadavg()[0]
                if got is None:
                    lines.append(
                        f"| {'2-thread hog' if hog else 'no hog'} | {threads} | both | did not "
                        f"finish in {time.perf_counter() - t0:.0f} s (killed) | - | - |"
                    )
                    print(lines[-1], flush=True)
                    continue
                for name, t in got.items():
                    med = statistics.median(t["wall"])
                    if not hog:
                        idle[(threads, name)] = med
                    rel = med / idle[(threads, name)] if (threads, name) in idle else math.nan
                    lines.append(
                        f"| {'2-thread hog' if hog else 'no hog'} | {threads} | {name} | "
                        f"{_ms(t['wall'])} | {1e3 * statistics.median(t['cpu']):.1f} | "
                        f"{rel:.2f}x |"
                    )
                    print(lines[-1], flush=True)  # partial results survive an interrupted run
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    lines.append("")
    lines.append(
        "1-minute load average after each configuration: "
        + ", ".join(
            f"{'hog' if h else 'no hog'}/{t} thread(s) {v:.2f}" for (h, t), v in loads.items()
        )
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

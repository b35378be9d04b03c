"""`diffspeed tune --quality fdd-ratio=1.05` on the embedded digits teacher, then the tuned
configuration benched side by side with every hand-picked demo row on the 1000-sample report set.

1. The search (``diffspeed.tune``, the CLI's defaults: every dimension, shipped students
   included; ``--no-students`` runs it again without them), on ``--threads`` threads; its cost
   (network calls, minutes) is printed.
2. One ``diffspeed bench`` run on the report set (1000 samples, seeds 0..999, the tuner's
   validation reference: Heun 100 Karras steps): the rows of ``demo.toml`` plus one
   ``tuned = "..."`` row per tuned file, latency timed round-robin against 50-step DDIM.
   Printed: the rows that meet FDD/ref <= the bar, fastest first.

    python benchmarks/tune_digits.py --threads 2 --out benchmarks/results/tune_digits.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

import diffspeed
from diffspeed.bench.config import BenchPlan, Row, demo_plan
from diffspeed.bench.runner import run_bench
from diffspeed.models.teacher import load_teacher
from diffspeed.tune import SearchSpace


def _tune(args, students: bool, tag: str) -> tuple[Path, dict]:
    space = SearchSpace() if students else SearchSpace(students=())
    t0 = time.perf_counter()
    res = diffspeed.tune(load_teacher(), args.quality, space=space, seed=args.seed, progress=True)
    wall = time.perf_counter() - t0
    path = res.save(Path(args.runs) / f"tuned-{tag}.json")
    res.write_report(Path(args.runs) / f"report-{tag}")
    print(res.message)
    return path, {"wall_s": wall, **res.tuned.report}


def _earlier(args, tag: str) -> tuple[Path, dict]:
    """A tuned file written by an earlier run, with its report."""
    path = Path(args.runs) / f"tuned-{tag}.json"
    report = json.loads(path.read_text())["report"]
    return path, {"wall_s": report["search_cost"]["seconds"], **report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quality", default="fdd-ratio=1.05")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", default="runs/tune")
    ap.add_argument("--no-students", action="store_true", help="also tune without students")
    ap.add_argument("--rows", default="", help="demo rows to bench (names; default: all)")
    ap.add_argument(
        "--bench-only", action="store_true", help="bench the tuned files of an earlier run"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_digits.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bar = float(args.quality.split("=")[1])

    tuned = {"tuned": _earlier(args, "all") if args.bench_only else _tune(args, True, "all")}
    if args.no_students:
        tag = "no-students"
        tuned["tuned (no students)"] = (
            _earlier(args, tag) if args.bench_only else _tune(args, False, tag)
        )

    plan = demo_plan()
    settings = replace(plan.settings, samples=args.samples, reference_steps=100,
                       repeats=args.repeats, threads=args.threads)  # fmt: skip
    demo = plan.rows
    if args.rows:
        wanted = [n.strip() for n in args.rows.split(",")]
        demo = tuple(r for r in plan.rows if r.label in wanted)
    rows = demo + tuple(Row(name=k, tuned=str(p)) for k, (p, _) in tuned.items())
    results = run_bench(BenchPlan(settings, rows), Path(args.runs) / "bench", resume=False)
    ref_fdd = results["reference"]["fdd"]
    recs = [dict(r, name=n) for n, r in results["rows"].items()]
    lines = [
        f"# diffspeed tune on the digits teacher ({args.quality})",
        "",
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
        f"torch threads {args.threads}; report set n={args.samples} (seeds 0..{args.samples - 1}); "
        f"reference FDD {ref_fdd:.3f} (Heun 100 Karras); latency timed round-robin, "
        f"{args.repeats} rounds, batch 1; speedup vs 50-step DDIM = median per-round ratio",
        "",
    ]
    for name, (path, rep) in tuned.items():
        cost = rep["search_cost"]
        lines.append(
            f"- **{name}**: {rep['label']} ({rep['nfe']} NFE) - tuning FDD ratio "
            f"{rep['tuning']['value']:.3f} on {rep['tuning']['noises']} calibration noises, "
            f"validation {rep['validation']['value']:.3f} on {rep['validation']['samples']}; "
            f"search {cost['candidates']} candidates, {cost['nfe']} network calls "
            f"({cost['sample_evals']} sample evaluations), {rep['wall_s'] / 60:.1f} min wall, "
            f"{cost['cpu_seconds'] / 60:.1f} CPU-min on {cost['threads']} threads; "
            f"rejected in validation: {', '.join(rep['rejected_in_validation']) or 'none'} "
            f"(`{path}`)"
        )
    lines += ["", f"Rows meeting FDD/ref <= {bar} on the report set, fastest first:", "",
              "| row | NFE | ms/img | speedup vs DDIM-50 | FDD | FDD/ref | PSNR dB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(recs, key=lambda r: -r["speedup"]):
        ratio = r["fdd"] / ref_fdd
        if ratio <= bar or r["name"].startswith("tuned") or "baseline" in r["name"]:
            mark = "" if ratio <= bar else " (misses the bar)"
            lines.append(
                f"| {r['name']}{mark} | {r['nfe']} | {1e3 * r['latency_s']:.2f} | "
                f"{r['speedup']:.2f}x | {r['fdd']:.3f} | {ratio:.3f} | {r['psnr']:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (Path(args.runs) / "tune_digits.json").write_text(
        json.dumps({k: v[1] for k, v in tuned.items()}, indent=1, default=str)
    )


if __name__ == "__main__":
    main()

"""Feature caching on the embedded teacher: speedup and quality, cached vs uncached, one run.

For each cache config (default: DeepCache variants and condition caching) on the guided teacher
(scale ``RECOMMENDED_GUIDANCE``), with the same solver and steps as the uncached baseline:

* wall-clock latency of one sampling run on a fixed batch (fixed thread count): uncached and
  cached runs are interleaved (1 warm-up pair, then ``--repeats`` pairs) so that load changes on
  a shared machine hit both alike; speedup = median of the per-pair ratios;
* FDD, class accuracy, PSNR vs the uncached run and vs the reference set (same noise/labels);
* "just use fewer steps": the uncached run of the best (highest PSNR vs the reference) of
  ``--fast-solvers`` at the NFE whose latency matches the cached run's (NFE / speedup), so you
  can see whether caching beats fewer steps.

Prints a markdown table and writes it to ``--out``.

    python benchmarks/cache_cpu.py --out benchmarks/results/cache_cpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import diffspeed
from diffspeed.cache import config_from_dict
from diffspeed.eval.metrics import class_accuracy, fdd, psnr
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import SOLVERS

DEFAULT_CONFIGS = [
    {"method": "condition"},
    {"method": "deepcache", "interval": 3, "branch": 1},
    {"method": "deepcache", "interval": 3, "branch": 0},
    {"method": "deepcache", "interval": 5, "branch": 0},
    {"method": "deepcache", "interval": 2, "input_branch": True},
    {"method": "deepcache", "interval": 3, "input_branch": True},
    {"method": "deepcache", "interval": 3, "input_branch": True, "schedule": "nonuniform"},
    {"method": "deepcache", "interval": 4, "input_branch": True},
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solver", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--schedule", default=None)
    p.add_argument("--n", type=int, default=1000, help="reference samples scored (<= 1000)")
    p.add_argument("--timing-batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", default=json.dumps(DEFAULT_CONFIGS), help="JSON list of configs")
    p.add_argument("--fast-solvers", default="dpmpp_2m,unipc,ddim")
    p.add_argument("--fast-schedule", default="karras")
    p.add_argument("--teacher", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_cpu.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    # the default reference set (seeds from 0), scored on its first n samples
    teacher = load_teacher(args.teacher)
    ref = reference_set(ReferenceSpec(), denoiser=teacher)
    select = teacher.cond_spec.select
    ref.noise, ref.cond, ref.samples = (
        ref.noise[: args.n],
        select(ref.cond, slice(0, args.n)),
        ref.samples[: args.n],
    )
    den = guided_teacher(RECOMMENDED_GUIDANCE, teacher)
    labels = cond_labels(ref.cond)
    tb = slice(0, args.timing_batch)

    def generate(solver: str, steps: int, schedule: str | None) -> tuple[torch.Tensor, int]:
        outs, nfe = [], 0
        for i in range(0, args.n, 250):
            sl = slice(i, i + 250)
            x, info = diffspeed.sample(
                den,
                ref.noise[sl],
                solver,
                steps,
                schedule,
                cond=select(ref.cond, sl),
                return_info=True,
            )
            outs.append(x)
            nfe = info["nfe"]
        return torch.cat(outs), nfe

    def paired_latency(run_a, run_b) -> tuple[float, float, float]:
        # interleave a and b so load changes on the shared machine hit both alike;
        # returns (median a, median b, median of per-repeat a/b ratios)
        ta, tb_, ratios = [], [], []
        for r in range(args.repeats + 1):
            a, b = run_a(), run_b()
            if r:
                ta.append(a)
                tb_.append(b)
                ratios.append(a / b)
        return statistics.median(ta), statistics.median(tb_), statistics.median(ratios)

    def timer(solver: str, steps: int, schedule: str | None, cfg=None):
        cond = select(ref.cond, tb)

        def run() -> float:
            handle = diffspeed.apply_cache(den, cfg) if cfg is not None else None
            t0 = time.perf_counter()
            diffspeed.sample(den, ref.noise[tb], solver, steps, schedule, cond=cond)
            t = time.perf_counter() - t0
            if handle is not None:
                handle.remove()
            return t

        return run

    def quality(x: torch.Tensor, base: torch.Tensor | None) -> dict[str, float]:
        return {
            "fdd": fdd(x),
            "acc": class_accuracy(x, labels),
            "psnr_uncached": psnr(x, base) if base is not None else float("inf"),
            "psnr_ref": psnr(x, ref.samples),
        }

    base_x, base_nfe = generate(args.solver, args.steps, args.schedule)
    uncached = timer(args.solver, args.steps, args.schedule)
    base = {"nfe": base_nfe, **quality(base_x, None)}
    base_ts: list[float] = []
    print(f"measured uncached: {base}", flush=True)
    fast_cache: dict[int, dict] = {}

    def fewer_steps(nfe: int) -> dict:
        # best uncached solver (lowest FDD) at an NFE budget
        if nfe not in fast_cache:
            best = None
            for name in args.fast_solvers.split(","):
                steps = SOLVERS[name].steps_for_nfe(nfe)
                x, real_nfe = generate(name, steps, args.fast_schedule)
                q = quality(x, base_x)
                if best is None or q["psnr_ref"] > best["psnr_ref"]:
                    best = {"solver": name, "steps": steps, "nfe": real_nfe, **q}
            fast = timer(best["solver"], best["steps"], args.fast_schedule)
            _, best["t"], best["speed"] = paired_latency(uncached, fast)
            fast_cache[nfe] = best
        return fast_cache[nfe]

    rows = []
    for spec in json.loads(args.configs):
        cfg = config_from_dict(spec)
        with diffspeed.apply_cache(den, cfg) as handle:
            x, nfe = generate(args.solver, args.steps, args.schedule)
            full_frac = handle.stats["full"] / max(1, handle.stats["evals"])
        q = quality(x, base_x)
        cached = timer(args.solver, args.steps, args.schedule, cfg)
        t_unc, t, speed = paired_latency(uncached, cached)
        base_ts.append(t_unc)
        match = max(1, round(base_nfe / speed))
        rows.append(
            {"cfg": cfg, "t": t, "speed": speed, "full": full_frac, **q, "alt": fewer_steps(match)}
        )

    base_t = statistics.median(base_ts)
    sched = args.schedule or "default"
    lines = [
        f"Teacher guided w={RECOMMENDED_GUIDANCE}, {args.solver} {args.steps} steps ({sched} "
        f"schedule), n={args.n} reference samples, latency on batch {args.timing_batch} "
        f"(median of {args.repeats}, {args.threads} thread(s)). Uncached: NFE {base_nfe}, "
        f"{base_t:.3f} s, FDD {base['fdd']:.3f}, acc {base['acc']:.3f}, "
        f"PSNR vs ref {base['psnr_ref']:.2f} dB.",
        "",
        "| cache config | full evals | latency s | speedup | FDD | FDD / uncached | acc | "
        "PSNR vs uncached | PSNR vs ref | target (>=2x, FDD<=1.05x) | fewer steps at same latency "
        "(solver, NFE, speedup, FDD, PSNR vs ref) | cache wins on PSNR vs ref? | on FDD? |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["alt"]
        ratio = r["fdd"] / base["fdd"]
        target = "yes" if r["speed"] >= 2 and ratio <= 1.05 else "no"
        win_psnr = "yes" if r["psnr_ref"] > a["psnr_ref"] else "no"
        win_fdd = "yes" if r["fdd"] < a["fdd"] else "no"
        lines.append(
            f"| `{json.dumps(r['cfg'].to_dict())}` | {r['full']:.2f} | {r['t']:.3f} | "
            f"{r['speed']:.2f}x | {r['fdd']:.3f} | {ratio:.2f} | {r['acc']:.3f} | "
            f"{r['psnr_uncached']:.2f} | {r['psnr_ref']:.2f} | {target} | {a['solver']} "
            f"{a['nfe']} NFE, {a['speed']:.2f}x, FDD {a['fdd']:.3f}, {a['psnr_ref']:.2f} dB | "
            f"{win_psnr} | {win_fdd} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()

"""Pick the NFE-N configuration by FDD on a disjoint screening set, then score it on the report set.

``benchmarks/solvers.py`` ranks configurations by RMSE to the reference sample. This script
asks the FDD question of the solver issue ("FDD at NFE 8 within 5 % of the reference's") the
way a user would answer it without touching the report set:

1. candidates: the strongest solvers of ``solvers.py`` x named schedules, AYS schedules tuned
   on calibration noises (``tune_schedule``, free start, from ``--ays-bases``), and the
   exposure-bias time shift (``time_shift``) at each of ``--shifts``;
2. screening: every candidate samples the ``--screen-n`` screening set (``ReferenceSpec`` seed
   7, noises disjoint from the report set) and is ranked by its FDD there;
3. report: the ``--top`` best by screening FDD sample the report set (seeds 0..n-1, the same
   noises and conditions as the reference) and are scored by FDD, accuracy and RMSE to the
   reference sample. The pick is the screening winner, whatever its report-set number.

    python benchmarks/solvers_fdd.py --nfe 8 --out benchmarks/results/solvers-fdd8.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from solvers import OURS, SCREEN_SEED, log, rmse, run_ours

import diffspeed
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import SOLVERS
from diffspeed.solvers.optimize import CALIBRATION_SEED_BASE, tune_schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", type=int, default=8)
    ap.add_argument("--n", type=int, default=1000, help="report-set samples")
    ap.add_argument("--screen-n", type=int, default=1000, help="screening-set samples")
    ap.add_argument("--solvers", default="deis3,unipc3,unipc2,dpmpp_3m,dpmpp_2m,ipndm")
    ap.add_argument("--schedules", default="leading,karras,logsnr")
    ap.add_argument("--ays-bases", default="leading,exponential")
    ap.add_argument("--shifts", default="0,0.015,0.03")
    ap.add_argument("--calib-n", type=int, default=32, help="AYS calibration noises")
    ap.add_argument("--top", type=int, default=3, help="screening winners scored on the report")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    teacher = load_teacher()
    cspec = teacher.cond_spec
    den = guided_teacher(RECOMMENDED_GUIDANCE, teacher)
    specs = {label: (sv, opts) for label, sv, opts in OURS}
    calib = diffspeed.seeded_noise(
        [CALIBRATION_SEED_BASE + i for i in range(args.calib_n)], cspec.sample_shape
    )
    calib_cond = cspec.example_cond(args.calib_n)
    screen_spec = ReferenceSpec(n=args.screen_n, seed=SCREEN_SEED)  # FDD needs no reference
    screen_noise = diffspeed.seeded_noise(screen_spec.seeds(), cspec.sample_shape)
    screen_cond = cspec.example_cond(screen_spec.n)
    shifts = [float(v) for v in args.shifts.split(",")]

    candidates = {}  # name -> (solver, steps, schedule, options)
    ays_nfe = 0
    with torch.inference_mode():
        for label in args.solvers.split(","):
            sv, opts = specs[label]
            steps = SOLVERS[sv].steps_for_nfe(args.nfe)
            if SOLVERS[sv].nfe(steps) != args.nfe:
                continue
            schedules: dict[str, str | torch.Tensor] = {
                s: s for s in args.schedules.split(",") if s
            }
            for base in (b for b in args.ays_bases.split(",") if b):
                res = tune_schedule(den, calib, sv, steps, cond=calib_cond, method="ays",
                                    base=base, solver_options=opts)  # fmt: skip
                ays_nfe += res.nfe
                schedules[f"ays<{base}"] = torch.tensor(res.sigmas, dtype=torch.float64)
            for sch_name, sch in schedules.items():
                for shift in shifts:
                    o = {**opts, "time_shift": shift} if shift else opts
                    candidates[f"{label}/{sch_name}/shift {shift:g}"] = (sv, steps, sch, o)
        log(f"{len(candidates)} candidates at NFE {args.nfe}; AYS tuning cost {ays_nfe} NFE")

        screened = []
        for name, (sv, steps, sch, o) in candidates.items():
            x = run_ours(den, screen_noise, screen_cond, sv, steps, sch, o)
            screened.append((fdd(x), name))
            log(f"screen {name}: FDD {screened[-1][0]:.4f}")
        screened.sort()

        ref = reference_set(ReferenceSpec(n=args.n), denoiser=teacher)
        ref_fdd = fdd(ref.samples)
        rows = []
        for s_fdd, name in screened[: args.top]:
            sv, steps, sch, o = candidates[name]
            x = run_ours(den, ref.noise, ref.cond, sv, steps, sch, o)
            f = fdd(x)
            acc = class_accuracy(x, cond_labels(ref.cond))
            rows.append((name, s_fdd, f, f / ref_fdd, acc, rmse(x, ref.samples)))

    lines = [
        f"NFE {args.nfe}: {len(candidates)} candidates screened by FDD on {args.screen_n} "
        f"samples of the screening set (ReferenceSpec seed {SCREEN_SEED}); the {args.top} best "
        f"scored on the report set (n={args.n}, reference FDD {ref_fdd:.3f}). AYS tuning "
        f"{ays_nfe} NFE on {args.calib_n} calibration noises. Wall time "
        f"{time.time() - t0:.0f} s, {args.threads} thread(s).",
        "",
        "| rank | configuration | screening FDD | report FDD | / reference | accuracy | RMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {i + 1} | {n} | {sf:.3f} | {f:.3f} | {r:.3f} | {a:.3f} | {e:.4f} |"
        for i, (n, sf, f, r, a, e) in enumerate(rows)
    ]
    lines += ["", "Screening FDD of every candidate", "", "| configuration | FDD |", "|---|---|"]
    lines += [f"| {n} | {f:.4f} |" for f, n in screened]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""How trustworthy are the solver benchmark's RMSE numbers? Two checks on the report set.

1. Where the RMSE comes from: for a few 15- and 20-NFE configurations on all --n samples, the
   RMSE, the median per-sample RMSE and the share of the squared error carried by the 10 worst
   samples (why a 100-sample screening set ranks configurations by luck).
2. The reference's own error: the Heun-100 Karras reference against Heun-400 Karras and
   DPM-Solver++(3M) with 400 Karras / 800 exponential steps, on the first --ref-n samples.

    python benchmarks/rmse_anatomy.py --n 1000 --ref-n 200
"""

from __future__ import annotations

import argparse

import torch

import diffspeed
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.teacher import guided_teacher, load_teacher

CONFIGS = [  # (solver, steps, schedule, options)
    ("unipc", 20, "exponential", {"order": 2}),
    ("unipc", 20, "exponential", {"order": 3}),
    ("deis", 20, "exponential", {}),
    ("unipc", 15, "exponential", {"order": 2}),
    ("deis", 15, "exponential", {}),
]
FINE = [("heun", 400, "karras"), ("dpmpp_3m", 400, "karras"), ("dpmpp_3m", 800, "exponential")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ref-n", type=int, default=200, help="samples for check 1 (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher()
    den = guided_teacher(RECOMMENDED_GUIDANCE, teacher)
    ref = reference_set(ReferenceSpec(n=args.n), denoiser=teacher)
    with torch.inference_mode():
        for solver, steps, schedule, opts in CONFIGS:
            x = diffspeed.sample(den, ref.noise, solver, steps, schedule, cond=ref.cond, **opts)
            e = (x - ref.samples).pow(2).flatten(1).mean(1)
            top10 = float(e.sort(descending=True).values[:10].sum() / e.sum())
            rms, med = float(e.mean().sqrt()), float(e.median().sqrt())
            print(f"{solver} {opts} {steps} {schedule}: RMSE {rms:.5f}, median sample "
                  f"{med:.5f}, 10 worst carry {top10:.2f}", flush=True)  # fmt: skip

        k = args.ref_n
        cond_k = teacher.cond_spec.select(ref.cond, slice(0, k))
        for solver, steps, schedule in FINE if k else []:
            x = diffspeed.sample(den, ref.noise[:k], solver, steps, schedule, cond=cond_k)
            err = float((x - ref.samples[:k]).pow(2).mean().sqrt())
            print(f"reference vs {solver}-{steps} {schedule} ({k} samples): RMSE {err:.5f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

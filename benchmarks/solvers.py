"""Training-free solvers vs diffusers' schedulers on the embedded teacher, side by side.

For every NFE in --nfe, every diffspeed solver x schedule (plus the data-free DP-optimised
schedule, calibrated on noises/conditions disjoint from the reference seeds) and every diffusers
scheduler (with trailing, leading and Karras spacing wherever it offers them) samples the
reference set's noises and conditions with the guided teacher (RECOMMENDED_GUIDANCE). Stage 1
screens every configuration by RMSE on a separate screening set (--screen-n samples of the same
high-accuracy sampler, seeds disjoint from the reference set, so no choice is made on the
report set). Stage 1b tunes an Align-Your-Steps-style schedule
(``tune_schedule(method="ays")``, free start) for the --ays-top best diffspeed solvers per NFE,
starting from each one's best screened schedule and from each of --ays-bases, on --calib-n
calibration noises (disjoint again; what a user runs with ``diffspeed tune-schedule``), and
screens the results like any other configuration. Stage 2 runs the best diffspeed and the
best diffusers configuration per NFE on all --n reference samples and reports RMSE to the
reference samples and FDD (the reference set's own FDD alongside).

    python benchmarks/solvers.py --n 1000 --out benchmarks/results/solvers.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import diffspeed
from diffspeed.eval.metrics import fdd
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.teacher import SCHEDULER_CONFIG, guided_teacher, load_teacher
from diffspeed.solvers import SOLVERS
from diffspeed.solvers.optimize import CALIBRATION_SEED_BASE, dp_schedules, tune_schedule

OURS = [  # (label, solver, options)
    ("ddim", "ddim", {}),
    ("heun", "heun", {}),
    ("plms", "plms", {}),
    ("ipndm", "ipndm", {}),
    ("deis3", "deis", {}),
    ("dpm_solver_3", "dpm_solver_3", {}),
    ("dpmpp_3s", "dpmpp_3s", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("dpmpp_3m_strict", "dpmpp_3m", {"strict_order": True}),
    ("unipc2", "unipc", {"order": 2}),
    ("unipc3", "unipc", {"order": 3}),
    ("unipc3_bh1", "unipc_bh1", {"order": 3}),
    ("sa_solver_ode", "sa_solver", {"tau": 0.0}),
]
SCHEDULES = ["trailing", "leading", "karras", "exponential", "dp"]
#: ReferenceSpec seed of the screening set (noise seeds 7 * 1_000_003 + i: disjoint).
SCREEN_SEED = 7

THEIRS = [  # (label, class name, kwargs, NFE -> steps)
    ("DDIM", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, None),
    ("PNDM", "PNDMScheduler", {"skip_prk_steps": True}, lambda n: n - 1),
    ("DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}, None),
    ("DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}, None),
    ("DPM++2S", "DPMSolverSinglestepScheduler", {"solver_order": 2}, None),
    ("DPM++3S", "DPMSolverSinglestepScheduler", {"solver_order": 3}, None),
    ("UniPC2", "UniPCMultistepScheduler", {"solver_order": 2}, None),
    ("UniPC3", "UniPCMultistepScheduler", {"solver_order": 3}, None),
    ("DEIS3", "DEISMultistepScheduler", {"solver_order": 3}, None),
    ("Euler", "EulerDiscreteScheduler", {}, None),
    ("Heun", "HeunDiscreteScheduler", {}, lambda n: (n + 1) // 2 if n % 2 else None),
    ("LMS", "LMSDiscreteScheduler", {}, None),
]
SPACINGS = {
    "trailing": {"timestep_spacing": "trailing"},
    "leading": {"timestep_spacing": "leading"},
    "karras": {"use_karras_sigmas": True},
}


def variants(cls_name: str) -> list[str]:
    """Spacing variants a scheduler supports: trailing and karras, else trailing and leading."""
    import diffusers

    config = getattr(diffusers, cls_name)().config
    ok = [v for v, kw in SPACINGS.items() if all(k in config for k in kw)]
    return [v for v in ok if v != "leading"] if "karras" in ok else ok


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def run_ours(den, noise, cond, solver, steps, schedule, opts):
    """``schedule``: a name or a tensor of sigmas (a tuned schedule)."""
    return diffspeed.sample(den, noise, solver, steps, schedule, cond=cond, **opts)


def lookup(tuned, label, schedule, steps):
    """A tuned schedule (AYS per solver, DP per step count) or the schedule's name."""
    return tuned.get((schedule, steps, label), tuned.get((schedule, steps), schedule))


def run_theirs(base, cls_name, kwargs, steps, noise, cond, scale):
    """diffusers' own loop: scale_model_input -> guided UNet eps -> scheduler.step.

    ``base``: the unguided teacher (its network and conditioning spec: cond and uncond are
    batched along each key's sample dimension)."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    extra = {k: v for k, v in kwargs.items() if k in cls().config}
    sched = cls(**SCHEDULER_CONFIG, **extra)
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    spec = base.cond_spec
    uncond = spec.unconditional(len(noise))
    both = {k: torch.cat([cond[k], uncond[k]], spec.batch_dim(k)) for k in cond}
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        e_c, e_u = base.model(torch.cat([inp, inp]), t, **both).sample.chunk(2)
        x = sched.step(e_u + scale * (e_c - e_u), t, x).prev_sample
    return x, len(sched.timesteps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="reference samples for stage 2")
    ap.add_argument("--screen-n", type=int, default=100, help="screening-set samples (stage 1)")
    ap.add_argument("--ays-top", type=int, default=3, help="solvers per NFE given an AYS tune")
    ap.add_argument("--ays-bases", default="leading",
                    help="AYS also starts from these (besides each solver's best)")  # fmt: skip
    ap.add_argument("--nfe", default="4,5,6,8,10,15,20")
    ap.add_argument("--calib-n", type=int, default=32, help="calibration noises (DP, AYS)")
    ap.add_argument("--grid", type=int, default=100, help="DP candidate timesteps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/solvers.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    nfes = [int(v) for v in args.nfe.split(",")]
    scale = RECOMMENDED_GUIDANCE
    base = load_teacher()
    den = guided_teacher(scale, base)
    log(f"reference set n={args.n}")
    ref = reference_set(ReferenceSpec(n=args.n), denoiser=base, progress=True)
    s = args.screen_n
    screen = reference_set(ReferenceSpec(n=s, seed=SCREEN_SEED), denoiser=base)
    noise, cond, target = screen.noise, screen.cond, screen.samples

    # data-free DP schedules, calibrated on seeds disjoint from the reference seeds
    calib = diffspeed.seeded_noise([CALIBRATION_SEED_BASE + i for i in range(args.calib_n)],
                                   base.cond_spec.sample_shape)  # fmt: skip
    all_steps = sorted({SOLVERS[sv].steps_for_nfe(n) for _, sv, _ in OURS for n in nfes})
    calib_cond = base.cond_spec.example_cond(args.calib_n)
    dp, tune_nfe = dp_schedules(den, calib, all_steps, grid=args.grid, cond=calib_cond)
    tuned = {("dp", k): v for k, v in dp.items()}
    log(f"DP schedules for steps {all_steps}: {tune_nfe} NFE")

    rows = []  # (nfe, side, label, rmse)
    spec_by_label = {lab: (sv, o) for lab, sv, o in OURS}
    ays_nfe = 0
    with torch.inference_mode():
        for nfe in nfes:
            log(f"screening NFE {nfe}")
            for label, sv, opts in OURS:
                spec = SOLVERS[sv]
                steps = spec.steps_for_nfe(nfe)
                if spec.nfe(steps) != nfe:
                    continue
                for sch in SCHEDULES:
                    x = run_ours(den, noise, cond, sv, steps, lookup(tuned, label, sch, steps),
                                 opts)  # fmt: skip
                    rows.append((nfe, "diffspeed", f"{label}/{sch}", rmse(x, target)))
            for label, cls, kw, to_steps in THEIRS:
                steps = to_steps(nfe) if to_steps else nfe
                if not steps:
                    continue
                for sp, skw in SPACINGS.items():
                    x, used = run_theirs(base, cls, {**kw, **skw}, steps, noise, cond, scale)
                    if used == nfe:
                        rows.append((nfe, "diffusers", f"{label}/{sp}", rmse(x, target)))
            # stage 1b: AYS-tuned schedules for the best few solvers at this NFE
            ours = sorted((r for r in rows if r[0] == nfe and r[1] == "diffspeed"),
                          key=lambda r: r[3])  # fmt: skip
            top: dict[str, str] = {}
            for _, _, cfg, _ in ours:
                lab, sch = cfg.split("/")
                if lab not in top and len(top) < args.ays_top:
                    top[lab] = sch
            extra_bases = [b for b in args.ays_bases.split(",") if b]
            for lab, best_sch in top.items():
                sv, opts = spec_by_label[lab]
                steps = SOLVERS[sv].steps_for_nfe(nfe)
                for sch in dict.fromkeys([best_sch, *extra_bases]):
                    res = tune_schedule(den, calib, sv, steps, cond=calib_cond, method="ays",
                                        base=lookup(tuned, lab, sch, steps),
                                        solver_options=opts)  # fmt: skip
                    sig = torch.tensor(res.sigmas, dtype=torch.float64)
                    tuned[(f"ays<{sch}", steps, lab)] = sig
                    ays_nfe += res.nfe
                    x = run_ours(den, noise, cond, sv, steps, sig, opts)
                    rows.append((nfe, "diffspeed", f"{lab}/ays<{sch}", rmse(x, target)))

    log("stage 2")
    # stage 2: best of each side per NFE on all n samples, RMSE + FDD
    table = []
    theirs_by_label = {lab: (c, k, f) for lab, c, k, f in THEIRS}
    fdd_ref = fdd(ref.samples)
    with torch.inference_mode():
        for nfe in nfes:
            best = {}
            for side in ("diffspeed", "diffusers"):
                cands = [r for r in rows if r[0] == nfe and r[1] == side]
                if cands:
                    best[side] = min(cands, key=lambda r: r[3])[2]
            full = {}
            if "diffspeed" in best:
                lab, sch = best["diffspeed"].split("/")
                sv, o = spec_by_label[lab]
                steps = SOLVERS[sv].steps_for_nfe(nfe)
                full["diffspeed"] = run_ours(den, ref.noise, ref.cond, sv, steps,
                                             lookup(tuned, lab, sch, steps), o)  # fmt: skip
            if "diffusers" in best:
                lab, sp = best["diffusers"].split("/")
                cls, kw, f = theirs_by_label[lab]
                steps = f(nfe) if f else nfe
                full["diffusers"] = run_theirs(base, cls, {**kw, **SPACINGS[sp]}, steps,
                                               ref.noise, ref.cond, scale)[0]  # fmt: skip
            r = {k: rmse(v, ref.samples) for k, v in full.items()}
            f_ = {k: fdd(v) for k, v in full.items()}
            table.append((nfe, best, r, f_))

    lines = [
        f"Teacher guided at w={scale}; reference: {ReferenceSpec(n=args.n)} (digest "
        f"{ref.digest}); screening on {s} samples of a disjoint set (ReferenceSpec seed "
        f"{SCREEN_SEED}), final numbers on all {args.n} reference samples. DP schedules "
        f"calibrated on {args.calib_n} noises with seeds "
        f"{CALIBRATION_SEED_BASE}+i (disjoint), cost {tune_nfe} network evaluations in total; "
        f"AYS schedules (free start; `ays<base` names the starting schedule: each solver's best "
        f"screened one and {args.ays_bases or 'no other'}) for the {args.ays_top} best solvers "
        f"per NFE on the same noises cost {ays_nfe} evaluations. "
        f"Reference FDD {fdd_ref:.3f}. Wall time {time.time() - t0:.0f} s.",
        "",
        "| NFE | diffspeed best | RMSE | FDD | diffusers best | RMSE | FDD | RMSE ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nfe, best, r, f_ in table:
        ratio = r.get("diffspeed", math.nan) / r.get("diffusers", math.nan)
        lines.append(
            f"| {nfe} | {best.get('diffspeed', '-')} | {r.get('diffspeed', math.nan):.4f} | "
            f"{f_.get('diffspeed', math.nan):.3f} | {best.get('diffusers', '-')} | "
            f"{r.get('diffusers', math.nan):.4f} | {f_.get('diffusers', math.nan):.3f} | "
            f"{ratio:.3f} |"
        )
    summary = "\n".join(lines)
    title = f"Full screening table (RMSE on the {s}-sample screening set)"
    full_rows = ["", title, "", "| NFE | side | config | RMSE |", "|---|---|---|---|"]
    full_rows += [f"| {n} | {side} | {lab} | {v:.4f} |" for n, side, lab, v in sorted(rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(summary + "\n" + "\n".join(full_rows) + "\n")
    print(summary)
    print(f"\nfull table: {args.out}")


if __name__ == "__main__":
    main()

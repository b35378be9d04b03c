"""Solver commands: ``diffspeed solvers`` (list) and ``diffspeed tune-schedule``."""

from __future__ import annotations

import argparse
import inspect
import re
import shutil
import textwrap
from pathlib import Path


def plain_summary(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring as one line of plain text: reStructuredText
    literals (````x````) and roles (``:func:`x```) lose their markup."""
    doc = inspect.getdoc(obj) or ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    para = re.sub(r":\w+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], para)
    return para.replace("``", "")


def _entry(head: str, text: str) -> str:
    width = max(60, min(shutil.get_terminal_size().columns, 110))
    return textwrap.fill(
        f"{head} - {text}",
        width=width,
        initial_indent="  ",
        subsequent_indent="      ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _solvers(args: argparse.Namespace) -> int:
    from diffspeed.solvers import SCHEDULES, SOLVERS

    print("solvers (name: order, NFE per step, kind - description)")
    for name in SOLVERS.names():
        spec = SOLVERS[name]
        kind = "SDE" if spec.stochastic else "ODE"
        head = f"{name}: order {spec.order}, {spec.evals_per_step}/step, {kind}"
        print(_entry(head, plain_summary(spec.fn)))
    print("schedules")
    for name in SCHEDULES.names():
        print(_entry(name, plain_summary(SCHEDULES[name])))
    return 0


def _tune(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.atomic import writable_parent
    from diffspeed.commands import check_sampling_args, json_option
    from diffspeed.eval.reference import RECOMMENDED_GUIDANCE
    from diffspeed.models.io import atomic_write_json
    from diffspeed.models.teacher import guided_teacher, load_teacher
    from diffspeed.solvers.noise import seeded_noise
    from diffspeed.solvers.optimize import CALIBRATION_SEED_BASE, tune_schedule
    from diffspeed.solvers.registry import SCHEDULES, SOLVERS

    check_sampling_args(args)
    opts = json_option(args.solver_options, "--solver-options")
    SOLVERS[args.solver]  # an unknown solver fails here (with a did-you-mean), not after work
    SCHEDULES[args.base]
    writable_parent(args.out, "schedule JSON")
    torch.set_num_threads(args.threads)
    guidance = RECOMMENDED_GUIDANCE if args.guidance is None else args.guidance
    den = load_teacher(args.teacher)
    if guidance != 1.0:
        den = guided_teacher(guidance, den)
    seeds = [CALIBRATION_SEED_BASE + i for i in range(args.calib_n)]
    noise = seeded_noise(seeds, den.cond_spec.sample_shape)
    cond = den.cond_spec.example_cond(args.calib_n)
    res = tune_schedule(
        den, noise, args.solver, args.steps, cond=cond, method=args.method,
        base=args.base, rounds=args.rounds, solver_options=opts or None,
        free_start=not args.fixed_start,
    )  # fmt: skip
    doc = res.to_json()
    doc["calibration"] = {
        "n": args.calib_n, "seeds": f"{CALIBRATION_SEED_BASE} + i",
        "cond": "the model's example conditions (cond_spec.example_cond(n))",
        "guidance": guidance,
    }  # fmt: skip
    atomic_write_json(Path(args.out), doc)
    print(f"wrote {args.out}: {args.method} schedule for {args.solver} x {args.steps} steps; "
          f"calibration MSE {res.loss_before:.4g} ({args.base}) -> {res.loss_after:.4g}; "
          f"cost {res.nfe} network evaluations on {args.calib_n} calibration noises")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``solvers`` and ``tune-schedule``."""
    p = sub.add_parser(
        "solvers",
        help="list the solvers and step schedules",
        description="List every registered solver (order, network evaluations per step, ODE "
        "or SDE) and step schedule, each with what it is.",
        epilog="example: diffspeed solvers",
    )
    p.set_defaults(func=_solvers)

    p = sub.add_parser(
        "tune-schedule",
        help="optimise a step schedule for the teacher (no data)",
        description="Optimise the sigmas of a few-step schedule for one solver on the teacher "
        "(AYS-style coordinate search or dynamic programming against a fine reference), with "
        "no training data; writes a schedule JSON that --schedule and diffspeed.sample accept.",
        epilog="example: diffspeed tune-schedule --solver dpmpp_2m --steps 6 --out schedule.json",
    )
    p.add_argument("--solver", default="dpmpp_2m", help="solver the schedule is tuned for")
    p.add_argument("--steps", type=int, default=6, help="solver steps")
    p.add_argument("--out", type=Path, default=Path("schedule.json"), help="JSON file to write")
    p.add_argument(
        "--method",
        choices=("ays", "dp"),
        default="ays",
        help="ays: coordinate search on the sigmas; dp: dynamic programming over a fine grid",
    )
    p.add_argument("--base", default="leading", help="starting / baseline schedule")
    p.add_argument("--rounds", type=int, default=4, help="coordinate-search rounds (ays)")
    p.add_argument("--fixed-start", action="store_true",
                   help="ays: keep the first sigma at sigma_max (default: tuned too)")  # fmt: skip
    p.add_argument("--calib-n", type=int, default=32, help="calibration noises (seeds disjoint "
                   "from the reference set)")  # fmt: skip
    p.add_argument("--guidance", type=float, default=None, help="default: recommended scale")
    p.add_argument("--solver-options", default=None, help="JSON, e.g. '{\"order\": 2}'")
    p.add_argument(
        "--teacher", type=Path, default=None, help="teacher .safetensors (default: embedded)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_tune)

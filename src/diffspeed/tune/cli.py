"""``diffspeed tune``: search the fastest configuration meeting a quality bar, write it to JSON."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def _tune(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.tune.quality import parse_quality
    from diffspeed.tune.search import load_tune_model, parse_budget, tune
    from diffspeed.tune.space import SearchSpace

    quality = parse_quality(args.quality)  # refuse a bad metric before loading anything
    budget = parse_budget(args.budget)
    torch.set_num_threads(args.threads)
    space = SearchSpace()
    over = {
        "solvers": _csv(args.solvers),
        "schedules": _csv(args.schedules),
        "tuned_schedules": _csv(args.tuned_schedules),
        "max_nfe": args.max_nfe,
        "students": () if args.no_students else None,
        "time_shifts": () if args.no_shift else None,
        "caches": () if args.no_cache else None,
    }
    space = replace(space, **{k: v for k, v in over.items() if v is not None})
    den = load_tune_model(args.model, args.device)
    result = tune(
        den,
        quality,
        budget,
        space=space,
        guidance=args.guidance,
        validation=args.validation,
        reference_steps=args.reference_steps,
        seed=args.seed,
        progress=not args.quiet,
    )
    path = result.save(args.out)
    report = result.write_report(args.report)
    print(result.message)
    print(f"wrote {path} and {report}")
    if not result.met:
        print(
            f"diffspeed: error: constraint {quality} not met; {path} holds the best found",
            file=sys.stderr,
        )
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed tune``."""
    p = sub.add_parser(
        "tune",
        help="find the fastest configuration meeting a quality bar (writes tuned.json)",
        description="Search solver x NFE x schedule (named, AYS/DP tuned on the fly) x "
        "exposure-bias shift x cache x shipped students for the fastest configuration whose "
        "quality meets --quality on held-out validation seeds. Apply the file with "
        '`diffspeed sample --config`, a bench row `tuned = "tuned.json"` or '
        'diffspeed.apply(pipe_or_denoiser, "tuned.json"). Exit status 1 when no '
        "configuration meets the bar (the best found is written).",
        epilog="example: diffspeed tune --quality psnr=30 --budget nfe=10 --out tuned.json",
    )
    p.add_argument(
        "--model",
        default=None,
        help="digits (default), mini-sd, a diffusers pipeline folder, a diffusers folder "
        "(unet/ + scheduler/), a teacher .safetensors or module:function (as diffspeed bench)",
    )
    p.add_argument(
        "--quality",
        default="psnr=30",
        help="psnr=DB or rmse=X (fidelity to the model's own reference from the same noise), "
        "or fdd-ratio=R (embedded digits models)",
    )
    p.add_argument("--budget", default=None, help="nfe=N and/or latency=20ms; default: none")
    p.add_argument("--out", type=Path, default=Path("tuned.json"), help="tuned config file")
    p.add_argument("--report", type=Path, default=Path("tune-report"), help="HTML report folder")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: 1.25 "
                   "for the digits teacher, else 1.0)")  # fmt: skip
    p.add_argument("--solvers", default=None, help="comma-separated solvers to search")
    p.add_argument("--schedules", default=None, help="comma-separated named schedules")
    p.add_argument("--tuned-schedules", default=None, help="ays,dp (empty: none)")
    p.add_argument("--max-nfe", type=int, default=None, help="largest NFE searched (20)")
    p.add_argument("--no-students", action="store_true", help="leave distilled students out")
    p.add_argument("--no-shift", action="store_true", help="no exposure-bias shift")
    p.add_argument("--no-cache", action="store_true", help="no cache configs")
    p.add_argument("--validation", type=int, default=None, help="validation samples")
    p.add_argument("--reference-steps", type=int, default=100, help="Heun reference steps")
    p.add_argument("--seed", type=int, default=0, help="calibration-noise seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda, ...")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_tune)

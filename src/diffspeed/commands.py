"""Core commands: train-teacher, train-classifier, sample."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffspeed.errors import ConfigError

#: First noise seed of the teacher-quality validation samples: disjoint from the reference
#: set's seeds (0 .. n-1).
VALIDATION_SEED = 10**8


def parse_labels(text: str) -> list[int]:
    """Parse ``"0-9"``, ``"3,5,7"`` or ``"0-4,7"`` into a list of digit labels."""
    from diffspeed.models.digits import NUM_CLASSES

    top = NUM_CLASSES - 1
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            a, b = (int(v) for v in part.split("-", 1)) if "-" in part[1:] else (int(part),) * 2
        except ValueError:
            raise ConfigError(
                f"labels {text!r}: {part!r} is not a digit or a range; use a list like "
                f"0-{top}, 1,3,5 or 0-4,7"
            ) from None
        if a > b:
            raise ConfigError(
                f"labels {text!r}: range {part!r} runs backwards; write it as {b}-{a}"
            )
        out.extend(range(a, b + 1))
    bad = sorted({v for v in out if not 0 <= v <= top})
    if bad:
        raise ConfigError(f"labels {text!r}: {bad} are not digits; use labels in 0..{top}")
    return out


#: Integer options of the sampling commands and their minimum.
_MIN_INT = {"per_label": 1, "threads": 1, "calib_n": 1, "n": 1, "n_val": 1, "rounds": 1, "seed": 0}


def check_sampling_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range options of a sampling command before any work is done."""
    import math

    from diffspeed.solvers.schedules import MAX_STEPS

    steps = getattr(args, "steps", None)
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must lie in 1..{MAX_STEPS}, got {steps}")
    for name, lo in _MIN_INT.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and value < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {lo}, got {value}")
    for name in ("guidance", "target_psnr"):
        values = getattr(args, name, None)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not math.isfinite(v):
                flag = f"--{name.replace('_', '-')}"
                raise ConfigError(f"{flag} must be a finite number (e.g. 2.0), got {v}")


def json_option(text: str | None, flag: str) -> dict:
    """Parse a JSON-object command-line option (``{}`` when not given)."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(
            f"{flag} is not valid JSON ({e}); pass an object such as '{{\"order\": 2}}' "
            "(double quotes inside single quotes)"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object such as '{{\"order\": 2}}', got {text}")
    return value


def _train_teacher(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.models.teacher import TeacherTraining, train_teacher

    torch.set_num_threads(args.threads)
    cfg = TeacherTraining(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    out = train_teacher(args.out, cfg, resume=not args.no_resume, progress=True)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.models.classifier import ClassifierTraining, train_classifier

    torch.set_num_threads(args.threads)
    acc = train_classifier(args.out, ClassifierTraining(epochs=args.epochs, seed=args.seed))
    print(f"wrote {args.out}; held-out accuracy {acc:.4f}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.atomic import image_target
    from diffspeed.eval.images import save_grid
    from diffspeed.models.teacher import guided_teacher, label_cond, load_teacher
    from diffspeed.solvers import sample, seeded_noise

    check_sampling_args(args)
    labels = parse_labels(args.labels)
    out = image_target(args.out, "grid.png")
    torch.set_num_threads(args.threads)
    y = torch.tensor(labels).repeat_interleave(args.per_label)
    den = load_teacher(args.teacher)
    if args.guidance != 1.0:
        den = guided_teacher(args.guidance, den)
    noise = seeded_noise(range(args.seed, args.seed + len(y)), den.cond_spec.sample_shape)
    if args.config is not None:  # a `diffspeed tune` file: its solver, schedule, cache, ...
        from diffspeed.tune import apply

        run = apply(load_teacher(args.teacher), args.config)
        x = run(noise, label_cond(y), seeds=list(range(args.seed, args.seed + len(y))))
        save_grid(x, args.out, nrow=args.per_label, title=f"{run.candidate.label}, NFE {run.nfe}")
        print(f"wrote {args.out} ({len(y)} samples, {run.candidate.label}, NFE {run.nfe})")
        return 0
    x, info = sample(
        den,
        noise,
        args.solver,
        args.steps,
        args.schedule,
        cond=label_cond(y),
        return_info=True,
    )
    save_grid(
        x,
        out,
        nrow=args.per_label,
        title=f"{args.solver} {info['steps']} steps, NFE {info['nfe']}, w={args.guidance}",
    )
    print(f"wrote {out} ({len(y)} samples, NFE {info['nfe']})")
    return 0


def _quality(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from diffspeed.atomic import image_target
    from diffspeed.eval import metrics
    from diffspeed.eval.images import save_grid
    from diffspeed.eval.reference import ReferenceSpec, reference_set
    from diffspeed.models.digits import NUM_CLASSES, real_halves
    from diffspeed.models.scoring import DIGITS
    from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
    from diffspeed.solvers import sample, seeded_noise

    check_sampling_args(args)
    if args.grid:
        image_target(args.grid, "quality_grid.png")
    torch.set_num_threads(args.threads)
    console = Console()
    a, b = real_halves()
    floor = metrics.frechet_distance(metrics.features(a), metrics.features(b))
    den = load_teacher(args.teacher)
    table = Table(title=f"teacher quality on validation seeds (n={args.n_val}, heun 50 steps)")
    for col in ("guidance", "FDD", "KID x1e3", "class acc"):
        table.add_column(col, justify="right")
    cond = den.cond_spec.example_cond(args.n_val)
    seeds = range(VALIDATION_SEED, VALIDATION_SEED + args.n_val)
    noise = seeded_noise(seeds, den.cond_spec.sample_shape)
    for w in args.guidance:
        x = sample(guided_teacher(w, den), noise, "heun", 50, "karras", cond=cond)
        score = DIGITS.score(x, cond)
        table.add_row(
            f"{w:g}",
            f"{score['fdd']:.3f}",
            f"{1e3 * score['kid']:.2f}",
            f"{score['accuracy']:.4f}",
        )
    console.print(table)
    ref = reference_set(ReferenceSpec(n=args.n), denoiser=den, progress=True)
    score = DIGITS.score(ref.samples, ref.cond)
    console.print(
        f"reference set (n={args.n}, seeds 0..{args.n - 1}, w={ref.spec.guidance:g}, "
        f"{ref.spec.solver} {ref.spec.steps} {ref.spec.schedule} steps, digest {ref.digest}): "
        f"FDD {score['fdd']:.3f}, KID x1e3 {1e3 * score['kid']:.2f}, "
        f"class accuracy {score['accuracy']:.4f}; "
        f"real-vs-real floor (898 vs 899 digits) FDD {floor:.3f}"
    )
    # memorisation check: distance of each sample to its nearest training digit, against the
    # distance between the two real halves
    from diffspeed.models.digits import load_digits

    nn_gen = torch.cdist(ref.samples.clamp(-1, 1).flatten(1), load_digits()[0].flatten(1))
    nn_real = torch.cdist(a.flatten(1), b.flatten(1))
    console.print(
        f"nearest real digit (L2): samples median {nn_gen.min(1).values.median():.2f}, "
        f"{int((nn_gen.min(1).values < 0.5).sum())} within 0.5; real half vs half median "
        f"{nn_real.min(1).values.median():.2f}"
    )
    if args.grid:
        order = torch.argsort(cond_labels(ref.cond)[:100], stable=True)
        save_grid(ref.samples[:100][order], args.grid, nrow=NUM_CLASSES)
        console.print(f"wrote {args.grid}")
    return 0


def _solver_help() -> str:
    from diffspeed.solvers import SOLVERS

    return "sampler: " + ", ".join(SOLVERS.names())


def _schedule_help() -> str:
    from diffspeed.solvers import SCHEDULES

    return (
        "step schedule: " + ", ".join(SCHEDULES.names()) + ", or a JSON file from "
        "'diffspeed tune-schedule' (default: the solver's own)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands."""
    p = sub.add_parser(
        "train-teacher",
        help="train the embedded digits teacher (CPU)",
        description="Train the embedded teacher (a class-conditional diffusers UNet2DModel on "
        "8x8 digits) from scratch; an interrupted run resumes from its checkpoint.",
        epilog="example: diffspeed train-teacher --steps 8000",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/teacher/teacher.safetensors"),
        help="weights file to write (a .json with the training record goes next to it)",
    )
    p.add_argument("--steps", type=int, default=8000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=_train_teacher)

    p = sub.add_parser(
        "train-classifier",
        help="train the metric network (FDD, accuracy)",
        description="Train the digits classifier whose features FDD and KID use and whose "
        "predictions give class accuracy.",
        epilog="example: diffspeed train-classifier --epochs 60",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/classifier/classifier.safetensors"),
        help="weights file to write",
    )
    p.add_argument("--epochs", type=int, default=60, help="passes over the training digits")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser(
        "sample",
        help="sample digits from the teacher into a PNG grid",
        description="Sample digits from the teacher with any solver and schedule and save "
        "them as a PNG grid, one row per label.",
        epilog="example: diffspeed sample --solver dpmpp_2m --steps 8 --out grid.png",
    )
    p.add_argument("--solver", default="ddim", help=_solver_help())
    p.add_argument("--steps", type=int, default=50, help="solver steps")
    p.add_argument("--schedule", default=None, help=_schedule_help())
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    p.add_argument(
        "--labels", default="0-9", help="digits to draw: a range (0-9) or a list (1,3,5)"
    )
    p.add_argument("--per-label", type=int, default=8, help="samples per label")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first sample")
    p.add_argument(
        "--teacher", type=Path, default=None, help="teacher .safetensors (default: embedded)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG file to write")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a `diffspeed tune` JSON (replaces --solver, --steps, --schedule and --guidance)",
    )
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "quality",
        help="teacher FDD / KID / accuracy vs guidance and the floor",
        description="Score the teacher: FDD, KID and class accuracy for several guidance "
        "scales on validation seeds, the reference set's scores and the real-vs-real floor.",
        epilog="example: diffspeed quality --guidance 1.0 1.25 2.0 --grid teacher.png",
    )
    p.add_argument("--n", type=int, default=1000, help="reference-set size")
    p.add_argument("--n-val", type=int, default=500, help="validation samples per scale")
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[1.0, 1.5, 2.0, 3.0, 4.0],
        help="guidance scales to score",
    )
    p.add_argument(
        "--teacher", type=Path, default=None, help="teacher .safetensors (default: embedded)"
    )
    p.add_argument("--grid", type=Path, default=None, help="write a PNG grid of samples")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_quality)

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

    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"labels {text!r}: use a list like 0-9 or 1,3,5") from None
    if not out or any(not 0 <= v < NUM_CLASSES for v in out):
        raise ConfigError(f"labels {text!r} must be digits 0..{NUM_CLASSES - 1}")
    return out


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

    from diffspeed.eval.images import save_grid
    from diffspeed.models.teacher import guided_teacher, label_cond, load_teacher
    from diffspeed.solvers import sample, seeded_noise

    torch.set_num_threads(args.threads)
    labels = parse_labels(args.labels)
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
        args.out,
        nrow=args.per_label,
        title=f"{args.solver} {info['steps']} steps, NFE {info['nfe']}, w={args.guidance}",
    )
    print(f"wrote {args.out} ({len(y)} samples, NFE {info['nfe']})")
    return 0


def _quality(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from diffspeed.eval import metrics
    from diffspeed.eval.images import save_grid
    from diffspeed.eval.reference import ReferenceSpec, reference_set
    from diffspeed.models.digits import NUM_CLASSES, real_halves
    from diffspeed.models.scoring import DIGITS
    from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
    from diffspeed.solvers import sample, seeded_noise

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands."""
    p = sub.add_parser("train-teacher", help="train the embedded digits teacher (CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/teacher/teacher.safetensors"))
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=_train_teacher)

    p = sub.add_parser("train-classifier", help="train the metric network (FDD, accuracy)")
    p.add_argument("--out", type=Path, default=Path("runs/classifier/classifier.safetensors"))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser("sample", help="sample digits from the teacher into a PNG grid")
    p.add_argument("--solver", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--schedule", default=None, help="schedule name or tune-schedule JSON")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--labels", default="0-9")
    p.add_argument("--per-label", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a `diffspeed tune` JSON (replaces --solver, --steps, --schedule and --guidance)",
    )
    p.set_defaults(func=_sample)

    p = sub.add_parser("quality", help="teacher FDD / KID / accuracy vs guidance and the floor")
    p.add_argument("--n", type=int, default=1000, help="reference-set size")
    p.add_argument("--n-val", type=int, default=500, help="validation samples per scale")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--teacher", type=Path, default=None)
    p.add_argument("--grid", type=Path, default=None, help="write a PNG grid of samples")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_quality)

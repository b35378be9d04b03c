"""``diffspeed cache ...``: list cache methods, calibrate one on the teacher, sample with it."""

from __future__ import annotations

import argparse
from pathlib import Path


def _methods(args: argparse.Namespace) -> int:
    import dataclasses

    from diffspeed.cache import CACHES, supported_models

    for name in CACHES.names():
        cls = CACHES[name]
        if cls.method != name:
            continue
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        print(f"{name}({fields})")
        print(f"    models: {', '.join(supported_models(cls))}")
    return 0


def _teacher(args: argparse.Namespace):
    import torch

    from diffspeed.commands import check_sampling_args
    from diffspeed.models.teacher import guided_teacher, load_teacher

    check_sampling_args(args)
    torch.set_num_threads(args.threads)
    den = load_teacher(args.teacher)
    return guided_teacher(args.guidance, den) if args.guidance != 1.0 else den


def _calibrate(args: argparse.Namespace) -> int:
    from diffspeed.atomic import atomic_write_text, writable_parent
    from diffspeed.cache import CACHES, calibrate
    from diffspeed.commands import json_option

    CACHES[args.method]  # an unknown method fails here (with a did-you-mean), not after work
    fixed = json_option(args.fixed, "--fixed")
    if args.out:
        writable_parent(args.out, "cache config")
    den = _teacher(args)
    res = calibrate(
        den,
        args.method,
        target_psnr=args.target_psnr,
        solver=args.solver,
        steps=args.steps,
        schedule=args.schedule,
        n=args.n,
        fixed=fixed,
    )
    print("| value | PSNR dB | full evals |")
    print("|---|---|---|")
    for t in res.trials:
        print(f"| {t['value']:g} | {t['psnr']:.2f} | {t['full_fraction']:.2f} |")
    print(f"chosen: {res.config.to_json()} (PSNR {res.psnr:.2f} dB, target {res.target_psnr})")
    if args.out:
        atomic_write_text(args.out, res.config.to_json() + "\n")
        print(f"wrote {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    import diffspeed
    from diffspeed.atomic import image_target
    from diffspeed.cache import config_from_dict
    from diffspeed.commands import parse_labels
    from diffspeed.errors import ConfigError
    from diffspeed.eval.images import save_grid
    from diffspeed.models.teacher import label_cond

    text = args.config
    if text.endswith(".json"):
        try:
            text = Path(text).read_text()
        except OSError as e:
            raise ConfigError(
                f"cannot read cache config {args.config} ({e.strerror}); check the path, or "
                'pass the JSON itself, e.g. \'{"method": "deepcache"}\''
            ) from None
    cfg = config_from_dict(text)
    y = torch.tensor(parse_labels(args.labels)).repeat_interleave(args.per_label)
    out = image_target(args.out, "cache_grid.png")
    den = _teacher(args)
    shape = den.cond_spec.sample_shape
    noise = diffspeed.seeded_noise(range(args.seed, args.seed + len(y)), shape)
    with diffspeed.apply_cache(den, cfg) as handle:
        x = diffspeed.sample(den, noise, args.solver, args.steps, args.schedule, cond=label_cond(y))
        stats = handle.stats
    title = f"{cfg.method} {args.solver} {args.steps} steps: {stats['full']}/{stats['evals']} full"
    save_grid(x, out, nrow=args.per_label, title=title)
    print(f"wrote {out} ({title})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from diffspeed.solvers import SCHEDULES, SOLVERS

    p.add_argument("--solver", default="ddim", help="sampler: " + ", ".join(SOLVERS.names()))
    p.add_argument("--steps", type=int, default=50, help="solver steps")
    p.add_argument(
        "--schedule",
        default=None,
        help="step schedule: " + ", ".join(SCHEDULES.names()) + " (default: the solver's own)",
    )
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    p.add_argument(
        "--teacher", type=Path, default=None, help="teacher .safetensors (default: embedded)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def _method_names() -> list[str]:
    from diffspeed.cache import CACHES

    return [n for n in CACHES.names() if CACHES[n].method == n]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed cache {methods,calibrate,sample}``."""
    p = sub.add_parser(
        "cache",
        help="feature caching: list methods, calibrate, sample",
        description="Feature caches reuse parts of the network's work between steps. List "
        "the methods, calibrate one to a PSNR target on the teacher, or sample with one.",
        epilog="example: diffspeed cache calibrate deepcache --target-psnr 30",
    )
    cs = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)

    q = cs.add_parser(
        "methods",
        help="list cache methods, their fields and supported models",
        description="List every cache method with its config fields (and defaults) and the "
        "model kinds it supports.",
        epilog="example: diffspeed cache methods",
    )
    q.set_defaults(func=_methods)

    names = ", ".join(_method_names())
    q = cs.add_parser(
        "calibrate",
        help="pick the interval/threshold meeting a PSNR target",
        description="Try a method's reuse interval or threshold from cautious to aggressive on "
        "calibration noises and keep the most aggressive one whose samples stay above the "
        "PSNR target (against the same sampler without the cache).",
        epilog="example: diffspeed cache calibrate teacache --target-psnr 30 --out teacache.json",
    )
    q.add_argument("method", metavar="METHOD", help=f"cache method: {names}")
    q.add_argument("--target-psnr", type=float, default=30.0, help="lowest acceptable PSNR (dB)")
    q.add_argument("--n", type=int, default=20, help="calibration samples (seeds 900000..)")
    q.add_argument("--fixed", default="{}", help='other fields as JSON, e.g. {"branch": 1}')
    q.add_argument("--out", type=Path, default=None, help="write the chosen config JSON here")
    _common(q)
    q.set_defaults(func=_calibrate)

    q = cs.add_parser(
        "sample",
        help="sample teacher digits with a cache installed",
        description="Sample digits from the teacher with a cache installed and save a PNG "
        "grid whose title says how many evaluations ran in full.",
        epilog='example: diffspeed cache sample \'{"method": "deepcache", "interval": 3}\'',
    )
    q.add_argument(
        "config",
        help=f'config JSON or a .json file, e.g. {{"method":"deepcache"}} (methods: {names})',
    )
    q.add_argument(
        "--labels", default="0-9", help="digits to draw: a range (0-9) or a list (1,3,5)"
    )
    q.add_argument("--per-label", type=int, default=8, help="samples per label")
    q.add_argument("--seed", type=int, default=0, help="noise seed of the first sample")
    q.add_argument("--out", type=Path, default=Path("cache_grid.png"), help="PNG file to write")
    _common(q)
    q.set_defaults(func=_sample)

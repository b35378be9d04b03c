"""``diffspeed demo`` and ``diffspeed bench``: the speed-vs-quality bench from the command line."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError

#: Settings that a command-line flag may override (flag name = key with dashes).
_OVERRIDES = (
    ("samples", int),
    ("seed", int),
    ("guidance", float),
    ("batch_size", int),
    ("warmup", int),
    ("repeats", int),
    ("timing_batch", int),
    ("threads", int),
)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shape {text!r}: use C,H,W, e.g. 3,32,32") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--shape {text!r}: use three positive integers C,H,W")
    return shape


def _uncond(text: str) -> dict[str, Any]:
    """``--uncond`` JSON: ``{cond key: number or nested list}`` as tensors."""
    import torch

    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--uncond {text!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--uncond {text!r}: give a JSON object {{cond key: value}}")
    try:
        return {str(k): torch.tensor(v) for k, v in data.items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"--uncond {text!r}: values must be numbers or lists ({e})") from None


def _print(results: dict[str, Any], out: Path) -> None:
    from rich.console import Console

    from diffspeed.bench.report import rich_table, timing_warning

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    console.print(rich_table(results))
    warning = timing_warning(results)
    if warning:
        console.print(f"WARNING: {warning}", style="bold yellow", markup=False)
    console.print(f"report: {Path(out) / 'index.html'} (and report.md, results.json)")


def _run_pipeline(plan, folder: str, args: argparse.Namespace) -> int:
    """The pipeline bench (mini-sd or a diffusers pipeline folder); states its wall time."""
    from diffspeed.bench.config import BenchPlan
    from diffspeed.bench.pipeline import PipelineOptions, run_pipeline_bench

    for flag in ("shape", "uncond"):
        if getattr(args, flag, None):
            raise ConfigError(
                f"--{flag} is for a bare denoiser; a pipeline brings its own shape and "
                "unconditional input (the empty prompt)"
            )
    over = {k: getattr(args, k) for k, _ in _OVERRIDES}
    plan = BenchPlan(plan.settings.with_overrides(**over), plan.rows)
    model = PipelineOptions(
        folder=folder, prompts=tuple(args.prompt), device=getattr(args, "device", None)
    )
    results = run_pipeline_bench(
        plan, args.out, model=model, resume=not args.no_resume, progress=not args.no_progress
    )
    _print(results, args.out)
    minutes, seconds = divmod(round(results["wall_s"]), 60)
    print(f"{args.command} took {minutes} min {seconds} s (wall time, this machine)")
    return 0


def _run(plan, args: argparse.Namespace) -> int:
    from diffspeed.bench.config import BenchPlan
    from diffspeed.bench.runner import ModelOptions, run_bench

    if args.prompt:
        raise ConfigError("--prompt is for a text-to-image pipeline (--model mini-sd or a folder)")
    over = {k: getattr(args, k) for k, _ in _OVERRIDES}
    plan = BenchPlan(plan.settings.with_overrides(**over), plan.rows)
    model = ModelOptions(
        source=getattr(args, "model", None),
        shape=_shape(args.shape) if getattr(args, "shape", None) else None,
        uncond=_uncond(args.uncond) if getattr(args, "uncond", None) else None,
        device=getattr(args, "device", None),
    )
    results = run_bench(
        plan, args.out, model=model, resume=not args.no_resume, progress=not args.no_progress
    )
    if int(os.environ.get("RANK", "0")) == 0:
        _print(results, args.out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from diffspeed.bench.config import demo_plan
    from diffspeed.bench.pipeline import SHIPPED_MODELS, pipeline_demo_plan, resolve_model

    kind, source = resolve_model(args.model)
    if kind == "pipeline":
        return _run_pipeline(pipeline_demo_plan(), source, args)
    if source is not None:
        raise ConfigError(
            f"diffspeed demo runs a shipped model ({', '.join(SHIPPED_MODELS)}) or a pipeline "
            f"folder; bench {args.model!r} with: diffspeed bench --model {args.model} ..."
        )
    return _run(demo_plan(), args)


def _bench(args: argparse.Namespace) -> int:
    from diffspeed.atomic import writable_parent
    from diffspeed.bench.config import BenchPlan, BenchSettings, load_plan, parse_row_arg
    from diffspeed.bench.pipeline import pipeline_demo_plan, resolve_model

    kind, source = resolve_model(args.model)
    if args.config:
        plan = load_plan(args.config)
    elif kind == "pipeline":  # the pipeline demo's settings, none of its rows
        plan = BenchPlan(pipeline_demo_plan().settings, ())
    else:
        plan = BenchPlan(BenchSettings(), ())
    rows = plan.rows + tuple(parse_row_arg(r) for r in args.row)
    if not rows:
        raise ConfigError("nothing to run: give a bench TOML file and/or --row KEY=VALUE,...")
    names = [r.label for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate row names {dupes}; give each row a unique name=...")
    writable_parent(Path(args.out) / "results.json", "bench output")
    if kind == "pipeline":
        return _run_pipeline(replace(plan, rows=rows), source, args)
    args.model = source
    return _run(replace(plan, rows=rows), args)


#: What each settings override means (the ``--help`` text).
_OVERRIDE_HELP = {
    "samples": "images per row for the quality columns",
    "seed": "reference-set seed (sample i has noise seed seed * 1000003 + i)",
    "guidance": "default classifier-free guidance scale of the rows and the reference",
    "batch_size": "images per generation call for the quality samples",
    "warmup": "untimed warm-up calls per row before timing",
    "repeats": "round-robin timing rounds (up to three times as many while ratios spread)",
    "timing_batch": "images per timed call (latency per image = time / this)",
    "threads": "torch intra-op threads; 1 keeps a shared machine's timings honest",
}


def _common(p: argparse.ArgumentParser, out: str, settings: str) -> None:
    p.add_argument("--out", type=Path, default=Path(out), help="report folder")
    for key, typ in _OVERRIDES:
        flag = "--" + key.replace("_", "-")
        p.add_argument(
            flag,
            type=typ,
            default=None,
            help=f"{_OVERRIDE_HELP[key]} (default: settings.{key} of {settings})",
        )
    p.add_argument("--no-resume", action="store_true", help="recompute rows already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt for a pipeline model (repeatable, cycled over the samples; mini-sd has "
        "its own)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` and ``bench``."""
    p = sub.add_parser(
        "demo",
        help="run every method on the embedded teacher and write diffspeed-report/",
        description="Every acceleration method of diffspeed on the embedded digits teacher, "
        "timed and scored side by side (rows: diffspeed/bench/demo.toml). Rows are timed "
        "round-robin against the baseline; on a busy machine the report says so and takes "
        "speedups from process CPU time.",
        epilog="example: diffspeed demo --threads 1 --out diffspeed-report",
    )
    p.add_argument(
        "--model",
        default=None,
        help="digits (default: the quick digits run), mini-sd (its pipeline rows: "
        "diffspeed/bench/demo_mini_sd.toml) or a diffusers text-to-image pipeline folder",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cpu; under accelerate launch, the process's device)",
    )
    _common(p, "diffspeed-report", "demo.toml")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "bench",
        help="benchmark configurations from a TOML file or --row",
        description="Benchmark rows (solver, steps, schedule, guidance, cache, peer, student...) "
        "on the embedded teacher or your model; finished rows are kept on re-runs.",
        epilog="example: diffspeed bench --threads 1 --row solver=heun,steps=5 "
        "--row peer=UniPCMultistepScheduler,steps=8",
    )
    p.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=None,
        help="bench TOML ([settings], [[row]]); without it, --row rows with default settings",
    )
    p.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="a row, e.g. solver=heun,steps=5,schedule=karras or peer=UniPCMultistepScheduler,"
        "steps=8 (repeatable; keys: name, method, solver, steps, schedule, guidance, cache.*, "
        "student, peer, options.*, schedule_options.*)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a shipped model (digits, mini-sd), a diffusers text-to-image pipeline folder "
        "(model_index.json; safetensors only), a teacher .safetensors, a diffusers folder "
        "(unet/ + scheduler/) or module:function (default: digits)",
    )
    p.add_argument("--shape", default=None, help="C,H,W of an image (import-path models)")
    p.add_argument(
        "--uncond",
        default=None,
        metavar="JSON",
        help="the model's unconditional inputs for guidance when it does not declare them, "
        "as {cond key: value} (e.g. the null class of a class-conditional diffusers UNet)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cpu; under accelerate launch, the process's device)",
    )
    _common(p, "diffspeed-report", "the TOML file, else the defaults")
    p.set_defaults(func=_bench)

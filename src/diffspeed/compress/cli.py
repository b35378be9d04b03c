"""``diffspeed quantize`` and ``diffspeed optimize``: try a recipe on the embedded teacher.

Options come from the config fields (``--format``, ``--act-groups``, ``--compile``...). Both
commands sample the first ``--samples`` of the report set (reference seeds) with the full-precision
teacher and with the compressed copy, and print FDD, their ratio, PSNR and the weight bytes;
``optimize`` also times both side by side (round-robin). Quantization calibrates on calibration
seeds, never on the report set's.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from diffspeed.compress.optimize import Optimize
from diffspeed.compress.quantize import Quantize


def _shown(value: Any) -> str:
    """A module constant as help text: the names of a collection, else the value."""
    if isinstance(value, tuple | list | dict | frozenset | set):
        return ", ".join(map(str, value))
    return str(value)


def _add_fields(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    from diffspeed.distill.cli import field_help

    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = re.sub(
            r":data:`(\w+)`",
            lambda m: _shown(getattr(sys.modules[cls.__module__], m.group(1))),
            helps.get(f.name, f"the {cls.__name__} field {f.name}"),
        )
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", help=text)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, default="", help=f"{text} (comma-separated)")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=text)


def _config(cls: type, args: argparse.Namespace) -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            kw[f.name] = tuple(s for s in v.split(",") if s) if isinstance(f.default, tuple) else v
    return cls(**kw)


def _setup(args: argparse.Namespace):
    import torch

    from diffspeed.eval.reference import ReferenceSpec
    from diffspeed.models.teacher import load_teacher
    from diffspeed.solvers import seeded_noise

    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    spec = teacher.cond_spec
    noise = seeded_noise(ReferenceSpec(n=args.samples).seeds(), spec.sample_shape)
    cond = spec.example_cond(args.samples)
    return teacher, noise, cond


def _guided(den: Any, scale: float) -> Any:
    from diffspeed.models.teacher import guided_teacher

    return guided_teacher(scale, den) if scale != 1.0 else den


def _compare(args, teacher, other, noise, cond, what: str) -> None:
    import torch

    import diffspeed
    from diffspeed.compress.quantize import module_bytes
    from diffspeed.core.contract import network_of
    from diffspeed.eval.metrics import fdd, psnr

    with torch.inference_mode():
        a = diffspeed.sample(
            _guided(teacher, args.guidance), noise, args.solver, args.steps, cond=cond
        )
        b = diffspeed.sample(
            _guided(other, args.guidance), noise, args.solver, args.steps, cond=cond
        )
    fa, fb = fdd(a.float()), fdd(b.float())
    print(f"{args.solver} {args.steps} steps, {args.samples} report-set samples")
    print("| model | FDD | FDD ratio | PSNR dB to fp32 | weights KiB |")
    print("|---|---|---|---|---|")
    print(f"| fp32 | {fa:.4f} | 1.000 | - | {module_bytes(network_of(teacher)) / 1024:.0f} |")
    size = module_bytes(network_of(other)) / 1024
    print(f"| {what} | {fb:.4f} | {fb / fa:.3f} | {psnr(b.float(), a.float()):.2f} | {size:.0f} |")


def _quantize(args: argparse.Namespace) -> int:
    import copy

    from diffspeed.compress import calibrate, quantize

    cfg = _config(Quantize, args)
    teacher, noise, cond = _setup(args)
    den = copy.deepcopy(teacher)
    if args.qat_steps:
        from diffspeed.compress.qat import QAT, qat
        from diffspeed.models.digits import load_digits
        from diffspeed.models.teacher import label_cond

        x0, y = load_digits("train")
        q = QAT(format=cfg.format, group_size=cfg.group_size, steps=args.qat_steps, keep=cfg.keep)
        den = qat(teacher, q, x0, label_cond(y), args.out, progress=True)
        print(f"QAT weights: {args.out / 'student.safetensors'} (bench: quant.weights=...)")
    calibration = None
    if cfg.format == "w8a8":
        if cfg.calibration != "trajectory":
            from diffspeed.compress import calibrate_forward
            from diffspeed.models.digits import load_digits
            from diffspeed.models.teacher import label_cond

            x0, y = load_digits("train")
            n = cfg.calib_samples
            calibration = calibrate_forward(teacher, cfg, x0[:n], label_cond(y[:n]))
        else:
            calibration = calibrate(
                _guided(teacher, args.guidance), cfg, solver=args.solver, steps=args.steps
            )
        if calibration.keep:
            print(f"sensitivity scan keeps in full precision: {', '.join(calibration.keep)}")
    handle = quantize(den, cfg, calibration=calibration)
    kinds: dict[str, int] = {}
    for how in handle.layers.values():
        kinds[how] = kinds.get(how, 0) + 1
    print("layers: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    _compare(args, teacher, den, noise, cond, f"{cfg.format} ({cfg.backend})")
    return 0


def _optimize(args: argparse.Namespace) -> int:
    import copy

    import torch

    import diffspeed
    from diffspeed.bench.timing import round_robin
    from diffspeed.compress import optimize

    cfg = _config(Optimize, args)
    teacher, noise, cond = _setup(args)
    den = optimize(copy.deepcopy(teacher), cfg)
    _compare(args, teacher, den, noise, cond, "optimized")
    tb = slice(0, args.timing_batch)
    tcond = teacher.cond_spec.select(cond, tb)

    def call(d):
        g = _guided(d, args.guidance)

        def run():
            with torch.inference_mode():
                diffspeed.sample(g, noise[tb], args.solver, args.steps, cond=tcond)

        return run

    t = round_robin(
        {"fp32": call(teacher), "optimized": call(den)},
        baseline="fp32",
        device=torch.device("cpu"),
        rounds=args.rounds,
    )
    print(f"speed vs fp32 (round-robin, {args.rounds} rounds): {t['optimized'].speedup:.2f}x")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from diffspeed.eval.reference import RECOMMENDED_GUIDANCE

    p.add_argument("--solver", default="ddim", help="solver the model is scored with")
    p.add_argument("--steps", type=int, default=20, help="solver steps")
    p.add_argument("--samples", type=int, default=200, help="report-set samples scored")
    p.add_argument("--guidance", type=float, default=RECOMMENDED_GUIDANCE, help="guidance scale")
    p.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed quantize`` and ``diffspeed optimize``."""
    p = sub.add_parser(
        "quantize",
        help="quantize the teacher (int8/int4/w8a8), score it",
        description="Quantize the embedded digits teacher (torchao on linear layers, fake-quant "
        "elsewhere; w8a8 calibrated on the sampler's own trajectories), optionally after a QAT "
        "fine-tune, and score it against the unquantized model with the same solver (FDD ratio, "
        "PSNR). In Python: diffspeed.compress.quantize(model, Quantize(...)).",
        epilog="example: diffspeed quantize --format w8a8 --act-groups 4 --keep-sensitive 2",
    )
    _add_fields(p, Quantize)
    p.add_argument("--qat-steps", type=int, default=0, help="QAT fine-tune first (0: PTQ)")
    p.add_argument("--out", type=Path, default=Path("runs/qat"), help="QAT run folder")
    _common(p)
    p.set_defaults(func=_quantize)

    p = sub.add_parser(
        "optimize",
        help="compile / cast / re-layout the teacher, score and time",
        description="Apply torch.compile, a dtype, a memory format or an attention backend to "
        "the embedded digits teacher, score it against the unchanged model and time both "
        "round-robin. In Python: diffspeed.compress.optimize(model, Optimize(...)).",
        epilog="example: diffspeed optimize --memory-format channels_last --rounds 3",
    )
    _add_fields(p, Optimize)
    p.add_argument("--timing-batch", type=int, default=8, help="images per timed call")
    p.add_argument("--rounds", type=int, default=5, help="round-robin timing rounds")
    _common(p)
    p.set_defaults(func=_optimize)

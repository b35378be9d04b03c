"""``diffspeed distill METHOD --out ...``: every registered method, its options generated from
its config's fields (and the training loop's from :class:`TrainConfig`'s).

``diffspeed distill finetune`` makes a style fine-tune of the teacher (LCM-LoRA's second model)
and ``diffspeed distill sample`` draws few-step samples of any student to a PNG. Training runs
under ``accelerate launch`` too (multi-process / multi-GPU): the loop reads the process
layout from the environment.
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError

#: Prefix of the argparse destinations of a config's fields (kept apart from the run options).
CFG, TRAIN = "cfg_", "train_"


def field_help(cls: type) -> dict[str, str]:
    """Per field, its text in the ``Attributes:`` section of the class docstring."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in doc[1].splitlines() if len(doc) > 1 else []:
        m = re.match(r"^ {8}(\w[\w, ]*): (.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            helps.update(dict.fromkeys(names, m.group(2)))
        elif line.startswith(" " * 12) and names:
            for n in names:
                helps[n] += " " + line.strip()
        elif line.strip():
            names = []
    return {k: v.replace("``", "") for k, v in helps.items()}


def _parser_of(hint: Any) -> tuple[Any, str | None]:
    """``(argparse type, metavar)`` of a field type: scalars, ``T | None`` and tuples."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _parser_of(args[0])
    if typing.get_origin(hint) is tuple:
        item = args[0]

        def parse(text: str) -> tuple:
            try:
                return tuple(item(v) for v in text.split(",") if v)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list") from None

        return parse, "A,B"
    return hint, None


def add_config_options(
    parser: Any,
    cls: type,
    dest_prefix: str,
    *,
    defaults: dict[str, Any] | None = None,
    taken: set[str] | frozenset[str] = frozenset(),
    types: dict[str, Any] | None = None,
) -> None:
    """One option per field of the dataclass ``cls``: ``--field-name`` (``--train-...`` when
    the name is in ``taken``), typed (or as ``types`` says) and documented from the field;
    ``defaults`` replace the fields' own defaults."""
    hints = {**typing.get_type_hints(cls), **(types or {})}
    helps = field_help(cls)
    for f in fields(cls):
        flag = f.name.replace("_", "-")
        if f.name in taken:
            flag = f"train-{flag}"
        default = (defaults or {}).get(f.name, f.default)
        if default is MISSING:
            default = f.default_factory()  # type: ignore[misc]
        if typing.get_origin(hints[f.name]) is tuple and not isinstance(default, tuple | None):
            default = (default,)
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "default": default, "help": text}
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"], metavar = _parser_of(hints[f.name])
            kwargs["metavar"] = metavar or f.name.upper()
        parser.add_argument(f"--{flag}", **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, dest_prefix: str) -> Any:
    """The dataclass ``cls`` from the parsed options :func:`add_config_options` added."""
    return cls(**{f.name: getattr(args, dest_prefix + f.name) for f in fields(cls)})


def _train_configs(cls: type, config: Any, args: argparse.Namespace) -> list[Any]:
    """One :class:`TrainConfig` per stage; ``--steps a,b,c`` sets each stage's steps."""
    from dataclasses import replace

    from diffspeed.distill.trainer import TrainConfig

    steps = getattr(args, TRAIN + "steps")
    n = config.stages()
    if len(steps) == 1:
        steps = steps * n
    if len(steps) != n:
        raise ConfigError(f"--steps lists {len(steps)} values; {config.method} has {n} stages")
    args = argparse.Namespace(**{**vars(args), TRAIN + "steps": 1})
    base = config_from_args(TrainConfig, args, TRAIN)
    return [replace(base, steps=s) for s in steps]


def _run(cls: type, args: argparse.Namespace) -> int:
    import torch

    import diffspeed
    from diffspeed.distill.students import recipe_evaluator
    from diffspeed.models.styles import digit_scores, training_set
    from diffspeed.models.teacher import load_teacher

    torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise ConfigError(
            f"{args.out} already holds a run; pass --resume to continue it or choose another --out"
        )
    config = config_from_args(cls, args, CFG)
    runs = _train_configs(cls, config, args)
    teacher = load_teacher(args.teacher)
    evaluate = None
    if any(r.eval_every for r in runs):
        evaluate = recipe_evaluator(teacher.cond_spec, digit_scores, args.eval_samples)
    path = diffspeed.distill(
        teacher,
        config,
        train=runs,
        out=args.out,
        data=training_set(args.data) if cls.needs_data else None,
        resume=args.resume,
        progress=not args.no_progress,
        evaluate=evaluate,
        force=args.force,
    )
    print(f"wrote {path}")
    if args.ship:
        _ship(config, args.out, path, args.ship, set(args.ship_steps))
    return 0


def _ship(config: Any, out: Path, path: Path, name: str, wanted: set[int]) -> None:
    """Copy the result into the package's students: an adapter folder as is, a consistency
    student as ``NAME``, fixed-step students (each round) as ``NAME-<steps>``, int8."""
    from diffspeed.atomic import atomic_dir
    from diffspeed.distill.students import (
        STUDENTS_DIR,
        load_student,
        read_student_config,
        save_student,
    )

    if path.is_dir():
        with atomic_dir(STUDENTS_DIR / name) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        print(f"shipped {STUDENTS_DIR / name}")
        return
    for p in sorted(out.glob("round-*/student.safetensors")) or [path]:
        den, recipe = load_student(p)
        if config.bench_row == "student" and wanted and recipe.steps not in wanted:
            continue
        dest = STUDENTS_DIR / (f"{name}-{recipe.steps}" if config.bench_row == "student" else name)
        info = read_student_config(p)["info"]
        save_student(dest.with_suffix(".safetensors"), den, recipe, int8=True, **info)
        print(f"shipped {dest}.safetensors")


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.distill.finetune import FineTune, finetune_teacher

    torch.set_num_threads(args.threads)
    cfg = config_from_args(FineTune, args, CFG)
    path = finetune_teacher(
        args.out, cfg, teacher_path=args.teacher, progress=not args.no_progress, ship=args.ship
    )
    print(f"wrote {path}" + (f" (shipped as students/{args.ship})" if args.ship else ""))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.commands import parse_labels
    from diffspeed.distill.consistency import load_consistency, sample_consistency
    from diffspeed.distill.students import (
        Recipe,
        as_cond,
        load_student,
        read_student_config,
        sample_shape,
        sample_student,
    )
    from diffspeed.eval.images import save_grid
    from diffspeed.models.teacher import load_teacher
    from diffspeed.solvers import seeded_noise

    torch.set_num_threads(args.threads)
    y = torch.tensor(parse_labels(args.labels)).repeat_interleave(args.per_label)
    seeds = list(range(args.seed, args.seed + len(y)))
    if args.lora:
        from diffspeed.distill.lora import load_lora

        student: Any = (load_lora(args.lora, load_teacher(args.teacher)), Recipe("lcm", (0.0,)))
    elif "boundary" in read_student_config(args.student).get("info", {}):
        student = load_consistency(args.student)
    else:
        student = load_student(args.student)
    den, recipe = student
    noise = seeded_noise(seeds, sample_shape(den.cond_spec))
    cond = as_cond(den, y)
    if recipe.solver == "lcm":
        x = sample_consistency(
            student, noise, cond, args.steps, guidance=args.guidance, generator=seeds
        )
        title = f"{args.steps}-step consistency sampling"
    else:
        x = sample_student(student, noise, cond, guidance=args.guidance)
        title = f"{recipe.steps}-step {recipe.solver} sampling"
    save_grid(x, args.out, nrow=args.per_label, title=title)
    print(f"wrote {args.out}")
    return 0


def _run_options(p: argparse.ArgumentParser, multi_round: bool) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="run directory")
    g.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors (+ .json)")
    g.add_argument(
        "--data",
        default="digits",
        help="training data: digits, a style (italic, thick), or several joined (digits,thick)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--force", action="store_true", help="resume even if the settings changed")
    g.add_argument("--eval-samples", type=int, default=200, help="samples per evaluation")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--ship", default=None, help="also copy the result into the package as NAME")
    g.add_argument(
        "--ship-steps",
        type=_parser_of(tuple[int, ...])[0],
        default=(),
        help="which step counts --ship copies (default: every round)"
        if multi_round
        else argparse.SUPPRESS,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed distill METHOD`` for every registered method, ``finetune`` and
    ``sample`` (``diffspeed consistency ...`` is the same command under its former name)."""
    from diffspeed.distill import DISTILLERS
    from diffspeed.distill.finetune import FineTune
    from diffspeed.distill.students import shipped_students
    from diffspeed.distill.trainer import TrainConfig

    p = sub.add_parser(
        "distill",
        aliases=["consistency"],
        help="distil the teacher into a few-step student",
        description="Distil the teacher into a few-step student with one of the registered "
        "methods (one subcommand each, options from its config), fine-tune the teacher on a "
        "style, or sample a student.",
        epilog="example: diffspeed distill progressive --out runs/progressive",
    )
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name in DISTILLERS:
        cls = DISTILLERS[name]
        doc = (cls.__doc__ or "").strip()
        m = methods.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc.split("Attributes:")[0].strip(),
            epilog=f"example: diffspeed distill {name} --out runs/{name}",
        )
        add_config_options(m.add_argument_group("method"), cls, CFG)
        loop = m.add_argument_group("training loop (--steps a,b,c: one value per stage)")
        add_config_options(
            loop,
            TrainConfig,
            TRAIN,
            defaults=cls.train_defaults,
            taken={f.name for f in fields(cls)},
            types={"steps": tuple[int, ...]},
        )
        _run_options(m, multi_round=cls.bench_row == "student")
        m.set_defaults(func=functools.partial(_run, cls))

    m = methods.add_parser(
        "finetune",
        help="fine-tune the teacher on a style (second model)",
        description="Fine-tune the teacher on a style of digits (italic, thick, ...) to get a "
        "second model, e.g. to test whether a LoRA distilled on one transfers to the other.",
        epilog="example: diffspeed distill finetune --out runs/italic.safetensors",
    )
    add_config_options(m, FineTune, CFG)
    m.add_argument("--out", type=Path, required=True, help="output .safetensors")
    m.add_argument(
        "--teacher", type=Path, default=None, help="teacher .safetensors (default: embedded)"
    )
    m.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--ship", default=None, help="also store it (int8) in the package as NAME")
    m.set_defaults(func=_finetune)

    m = methods.add_parser(
        "sample",
        help="few-step samples of a student to a PNG",
        description="Sample digits from a distilled student (shipped or a weights file) or "
        "the teacher with an LCM-LoRA, and save a PNG grid, one row per label.",
        epilog="example: diffspeed distill sample --student lcm --steps 2 --out lcm.png",
    )
    m.add_argument(
        "--student",
        default="lcm",
        help="a student .safetensors or a shipped name: " + ", ".join(shipped_students()),
    )
    m.add_argument("--lora", type=Path, default=None, help="an LCM-LoRA directory instead")
    m.add_argument("--teacher", type=Path, default=None, help="base model for --lora")
    m.add_argument("--steps", type=int, default=4, help="steps of a consistency student")
    m.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale of a w-conditioned student (default: its recipe's)",
    )
    m.add_argument(
        "--labels", default="0-9", help="digits to draw: a range (0-9) or a list (1,3,5)"
    )
    m.add_argument("--per-label", type=int, default=8, help="samples per label")
    m.add_argument("--seed", type=int, default=0, help="noise seed of the first sample")
    m.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    m.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG file to write")
    m.set_defaults(func=_sample)

"""``diffspeed distill METHOD --teacher ... --out ...``: train students from the command line.

Runs under ``accelerate launch`` too (multi-process / multi-GPU): the loop reads the process
layout from the environment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise ConfigError(f"{text!r}: expected comma-separated integers like 300,300,400") from None


def _floats(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{text!r}: expected two numbers like 1,4") from None
    return lo, hi


def _train_config(args: argparse.Namespace, steps: int) -> Any:
    from diffspeed.distill.trainer import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        grad_accum=args.grad_accum,
        ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
    )


def _round_configs(args: argparse.Namespace, n_rounds: int) -> list[Any]:
    steps = _ints(args.round_steps)
    if len(steps) == 1:
        steps = steps * n_rounds
    if len(steps) != n_rounds:
        raise ConfigError(f"--round-steps lists {len(steps)} values for {n_rounds} rounds")
    return [_train_config(args, s) for s in steps]


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    import torch

    from diffspeed.distill.students import recipe_evaluator
    from diffspeed.distill.trainer import TrainData
    from diffspeed.models.styles import digit_scores, training_set
    from diffspeed.models.teacher import load_teacher

    torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise ConfigError(
            f"{args.out} already holds a run; pass --resume to continue it or choose another --out"
        )
    teacher = load_teacher(args.teacher)
    data = TrainData(*training_set("digits"))
    evaluate = None
    if args.eval_every:
        evaluate = recipe_evaluator(teacher.cond_spec, digit_scores, args.eval_samples)
    return teacher, data, evaluate


def _shipper(args: argparse.Namespace) -> Any:
    """``on_round(steps, path)``: copy chosen rounds into the package's students (int8)."""
    from diffspeed.distill.students import STUDENTS_DIR, load_student, save_student

    wanted = set(_ints(args.ship_steps)) if args.ship else set()

    def on_round(steps: int, path: Path) -> None:
        print(f"round done: {steps} steps -> {path}")
        if steps in wanted:
            den, recipe = load_student(path)
            info = json.loads(path.with_suffix(".json").read_text())["info"]
            dest = STUDENTS_DIR / f"{args.ship}-{steps}.safetensors"
            save_student(dest, den, recipe, int8=True, **info)
            print(f"shipped {dest}")

    return on_round


def _progressive(args: argparse.Namespace) -> int:
    from diffspeed.distill.progressive import Progressive, distill_progressive
    from diffspeed.distill.students import module_digest
    from diffspeed.models.teacher import guided_teacher

    teacher, data, evaluate = _prepare(args)
    cfg = Progressive(
        teacher_steps=args.teacher_steps,
        final_steps=args.final_steps,
        schedule=args.schedule,
        parameterization=args.parameterization,
        weighting=args.weighting,
        guidance=args.guidance,
        teacher_substeps=args.teacher_substeps,
    )
    guided = guided_teacher(cfg.guidance, teacher) if cfg.guidance != 1.0 else teacher
    path = distill_progressive(
        guided,
        cfg,
        _round_configs(args, len(cfg.rounds())),
        args.out,
        data=data,
        resume=args.resume,
        evaluate=evaluate,
        run_info={"teacher": module_digest(teacher)},
        progress=not args.no_progress,
        on_round=_shipper(args),
    )
    print(f"wrote {path}")
    return 0


def _guided(args: argparse.Namespace) -> int:
    from diffspeed.distill.guided import Guided, distill_guided

    teacher, data, evaluate = _prepare(args)
    cfg = Guided(
        w_range=_floats(args.w_range),
        guidance=args.guidance,
        parameterization=args.parameterization,
        stage1_parameterization=args.stage1_parameterization,
        teacher_steps=args.teacher_steps,
        final_steps=args.final_steps,
        schedule=args.schedule,
        weighting=args.weighting,
        teacher_substeps=args.teacher_substeps,
    )
    path = distill_guided(
        teacher,
        cfg,
        _train_config(args, args.stage1_steps),
        _round_configs(args, len(cfg.progressive().rounds())),
        args.out,
        data=data,
        resume=args.resume,
        evaluate=evaluate,
        progress=not args.no_progress,
        on_round=_shipper(args),
    )
    print(f"wrote {path}")
    return 0


def _kd(args: argparse.Namespace) -> int:
    from diffspeed.distill.kd import KD, distill_kd

    teacher, _, evaluate = _prepare(args)
    cfg = KD(
        student_steps=args.student_steps,
        schedule=args.schedule,
        parameterization=args.parameterization,
        guidance=args.guidance,
        teacher_solver=args.teacher_solver,
        teacher_steps=args.teacher_steps,
        num_pairs=args.num_pairs,
    )
    path = distill_kd(
        teacher,
        cfg,
        _train_config(args, _ints(args.round_steps)[0]),
        args.out,
        resume=args.resume,
        evaluate=evaluate,
        progress=not args.no_progress,
    )
    if args.ship:
        _shipper(argparse.Namespace(ship=args.ship, ship_steps=str(cfg.student_steps)))(
            cfg.student_steps, path
        )
    print(f"wrote {path}")
    return 0


def _common(p: argparse.ArgumentParser, *, teacher_steps: int, weighting: bool = True) -> None:
    p.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors (+ .json)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--round-steps", default="300", help="optimizer steps (per round: a,b,c)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="steps between FDD evaluations")
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance scale of the students")
    p.add_argument("--parameterization", default="v", choices=["v", "x0", "eps"])
    p.add_argument("--schedule", default="trailing", help="schedule of the step grid")
    p.add_argument("--teacher-steps", type=int, default=teacher_steps)
    p.add_argument("--ship", default=None, help="copy students into the package as NAME-<steps>")
    if weighting:
        p.add_argument("--final-steps", type=int, default=1)
        p.add_argument("--weighting", default="next_snr", help="progressive loss weighting")
        p.add_argument("--ship-steps", default="8,4,2,1", help="which rounds --ship copies")
        p.add_argument(
            "--teacher-substeps",
            type=int,
            default=1,
            help="first round: 2nd-order ODE steps per teacher half step (1: one DDIM step)",
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed distill {progressive,guided,kd}``."""
    p = sub.add_parser("distill", help="distil the teacher into a few-step student")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)

    m = methods.add_parser("progressive", help="progressive distillation (Salimans & Ho 2022)")
    _common(m, teacher_steps=16)
    m.set_defaults(func=_progressive)

    m = methods.add_parser("guided", help="guided distillation (Meng et al. 2023)")
    _common(m, teacher_steps=16)
    m.add_argument("--w-range", default="1,4", help="trained guidance range, e.g. 1,4")
    m.add_argument("--stage1-steps", type=int, default=300, help="steps of stage 1")
    m.add_argument(
        "--stage1-parameterization",
        default="eps",
        choices=["v", "x0", "eps"],
        help="what the stage-1 student predicts (eps: the teacher's own, so it starts exact)",
    )
    m.set_defaults(func=_guided)

    m = methods.add_parser("kd", help="knowledge distillation (Luhman & Luhman 2021)")
    _common(m, teacher_steps=50, weighting=False)
    m.add_argument("--student-steps", type=int, default=1)
    m.add_argument("--teacher-solver", default="heun")
    m.add_argument("--num-pairs", type=int, default=2000)
    m.set_defaults(func=_kd)

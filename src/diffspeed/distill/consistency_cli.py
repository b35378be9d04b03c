"""``diffspeed consistency cd|ct|lcm|lcm-lora|finetune|sample``: consistency models from the CLI.

Each training command runs the shared distillation loop (HF Accelerate; ``accelerate launch``
works) and writes ``--out/student.safetensors`` (+ ``.json``) or, for ``lcm-lora``, the
diffusers-format adapter directory ``--out/lora/``; ``--ship NAME`` also copies the result
into the package (``models/assets/students/NAME``, int8-compressed weights).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError


def _w_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{text!r}: expected two numbers like 1,3") from None
    return lo, hi


def _train_config(args: argparse.Namespace) -> Any:
    from diffspeed.distill.trainer import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        lr_schedule=args.lr_schedule,
        ema_decay=args.ema_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
    )


def _prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from diffspeed.distill.trainer import TrainData
    from diffspeed.models.styles import training_set
    from diffspeed.models.teacher import load_teacher

    torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise ConfigError(
            f"{args.out} already holds a run; pass --resume to continue it or choose another --out"
        )
    teacher = load_teacher(args.teacher)
    return teacher, TrainData(*training_set(args.data))


def _evaluator(args: argparse.Namespace, guidance: float | None, spec: Any) -> Any:
    if not args.eval_every:
        return None
    from diffspeed.distill.consistency import sample_consistency
    from diffspeed.distill.students import EVAL_SEED, sample_shape
    from diffspeed.models.styles import digit_scores
    from diffspeed.solvers import seeded_noise

    n = args.eval_samples
    cond = spec.example_cond(n)
    seeds = [EVAL_SEED * 1_000_003 + i for i in range(n)]
    noise = seeded_noise(seeds, sample_shape(spec))

    def evaluate(student: Any, step: int) -> dict[str, float]:
        from diffspeed.distill.students import Recipe

        recipe = Recipe("lcm", (0.0,), guidance or 1.0, guidance is not None and args.w_cond)
        scores = {}
        for k in (1, 4):
            x = sample_consistency((student, recipe), noise, cond, k, generator=seeds)
            scores.update({f"{name}{k}": v for name, v in digit_scores(x, cond).items()})
        return scores

    return evaluate


def _top_sigma(teacher: Any, strength: float) -> float | None:
    """The first sigma of the ``lcm`` schedule at ``strength`` (None for the full range)."""
    if strength == 1.0:
        return None
    from diffspeed.solvers.schedules import get_sigmas

    return float(get_sigmas(teacher, "lcm", 1, strength=strength)[0])


def _ship(path: Path, name: str) -> None:
    from diffspeed.distill.consistency import consistency_info, load_consistency
    from diffspeed.distill.students import STUDENTS_DIR, save_student

    den, recipe = load_consistency(path)
    info = consistency_info(path)
    dest = STUDENTS_DIR / f"{name}.safetensors"
    save_student(dest, den.inner, recipe, int8=True, **info)
    print(f"shipped {dest}")


def _cd(args: argparse.Namespace) -> int:
    from diffspeed.distill.cd import CD, CDLoss
    from diffspeed.distill.consistency import (
        consistency_recipe,
        consistency_student,
        train_consistency,
    )

    teacher, data = _prepare(args)
    cfg = CD(
        solver=args.solver,
        guidance=args.guidance,
        n_start=args.n_start,
        n_end=args.n_end,
        sigma_max=_top_sigma(teacher, args.strength),
        metric=args.metric,
        target_decay=args.target_decay,
        groups=args.groups,
    )
    student = consistency_student(
        teacher, cfg.boundary, parameterization=args.parameterization, strength=args.strength
    )
    args.w_cond = False
    path = train_consistency(
        student,
        CDLoss(cfg),
        teacher,
        _train_config(args),
        args.out,
        data=data,
        recipe=consistency_recipe(student, guidance=cfg.guidance),
        resume=args.resume,
        evaluate=_evaluator(args, None, teacher.cond_spec),
        progress=not args.no_progress,
    )
    return _done(args, path)


def _ct(args: argparse.Namespace) -> int:
    from diffspeed.distill.consistency import (
        consistency_recipe,
        consistency_student,
        train_consistency,
    )
    from diffspeed.distill.ct import CT, CTLoss

    teacher, data = _prepare(args)
    cfg = CT(
        n_start=args.n_start,
        n_end=args.n_end,
        sigma_max=_top_sigma(teacher, args.strength),
        metric=args.metric,
        target_decay=args.target_decay,
    )
    # initialised from the teacher's weights (as in ECT, Geng et al. 2024); trained on data only
    student = consistency_student(
        teacher, cfg.boundary, parameterization=args.parameterization, strength=args.strength
    )
    args.w_cond = False
    path = train_consistency(
        student,
        CTLoss(cfg),
        None,
        _train_config(args),
        args.out,
        data=data,
        recipe=consistency_recipe(student),
        resume=args.resume,
        evaluate=_evaluator(args, None, teacher.cond_spec),
        progress=not args.no_progress,
        info={"init": "teacher weights"},
    )
    return _done(args, path)


def _lcm_config(args: argparse.Namespace, *, w_embedding: bool) -> Any:
    from diffspeed.distill.lcm import LCM

    lo, hi = _w_range(args.w_range) if w_embedding else (args.guidance, args.guidance)
    return LCM(
        k=args.k,
        strength=args.strength,
        solver=args.solver,
        w_min=lo,
        w_max=hi,
        w_embedding=w_embedding,
        metric=args.metric,
        target_decay=args.target_decay,
        groups=args.groups,
        anchor=args.anchor,
        anchor_top=args.anchor_top,
        anchor_pairs=args.anchor_pairs,
        anchor_substeps=args.anchor_substeps,
    )


def _lcm_loss(args: argparse.Namespace, cfg: Any, teacher: Any) -> Any:
    """The LCM loss, with teacher trajectories (cached in ``--out``) when ``--anchor > 0``."""
    from diffspeed.distill.lcm import LCMLoss

    if cfg.anchor == 0:
        return LCMLoss(cfg)
    from diffspeed.distill.consistency import timestep_grid
    from diffspeed.distill.trajectories import teacher_trajectories

    args.out.mkdir(parents=True, exist_ok=True)
    trajectories = teacher_trajectories(
        teacher,
        timestep_grid(teacher, cfg.k, cfg.strength),
        num=cfg.anchor_pairs,
        w_range=(cfg.w_min, cfg.w_max),
        substeps=cfg.anchor_substeps,
        cache=args.out / "trajectories.safetensors",
        progress=not args.no_progress,
    )
    return LCMLoss(cfg, trajectories)


def _lcm(args: argparse.Namespace) -> int:
    from diffspeed.distill.consistency import (
        consistency_recipe,
        consistency_student,
        train_consistency,
    )

    teacher, data = _prepare(args)
    cfg = _lcm_config(args, w_embedding=True)
    init = None
    if args.init:
        from diffspeed.distill.students import load_student

        init, _ = load_student(args.init)
    student = consistency_student(
        teacher,
        cfg.boundary,
        parameterization=args.parameterization,
        w_conditioned=True,
        strength=args.strength,
        init=init,
    )
    args.w_cond = True
    path = train_consistency(
        student,
        _lcm_loss(args, cfg, teacher),
        teacher,
        _train_config(args),
        args.out,
        data=data,
        recipe=consistency_recipe(student, guidance=args.guidance, w_range=(cfg.w_min, cfg.w_max)),
        resume=args.resume,
        evaluate=_evaluator(args, args.guidance, teacher.cond_spec),
        progress=not args.no_progress,
        info={"init": str(args.init)} if args.init else None,
    )
    return _done(args, path)


def _lora_targets(spec: str | None) -> tuple[str, ...]:
    """``--targets``: None (the default set), ``all`` or comma-separated module suffixes."""
    from diffspeed.distill.lora import ALL_TARGETS, DEFAULT_TARGETS

    if not spec:
        return DEFAULT_TARGETS
    return ALL_TARGETS if spec == "all" else tuple(t for t in spec.split(",") if t)


def _lcm_lora(args: argparse.Namespace) -> int:
    from diffspeed.distill.lora import LoRA, train_lcm_lora

    teacher, data = _prepare(args)
    if args.from_lcm:
        from diffspeed.distill.lcm_kd import LCMKD, LCMKDLoss

        kd = LCMKD.for_source(args.from_lcm, guidance=args.guidance, metric=args.metric)
        loss: Any = LCMKDLoss(kd)
    else:
        loss = _lcm_loss(args, _lcm_config(args, w_embedding=False), teacher)
    args.w_cond = False
    out = train_lcm_lora(
        teacher,
        loss,
        LoRA(
            rank=args.rank,
            alpha=args.alpha if args.alpha else float(args.rank),
            targets=_lora_targets(args.targets),
        ),
        _train_config(args),
        args.out,
        data=data,
        resume=args.resume,
        evaluate=_evaluator(args, None, teacher.cond_spec),
        progress=not args.no_progress,
    )
    print(f"wrote {out}")
    if args.ship:
        from diffspeed.distill.students import STUDENTS_DIR

        dest = STUDENTS_DIR / args.ship
        shutil.copytree(out, dest, dirs_exist_ok=True)
        print(f"shipped {dest}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.distill.finetune import FineTune, finetune_teacher

    torch.set_num_threads(args.threads)
    cfg = FineTune(style=args.style, steps=args.steps, lr=args.lr, seed=args.seed)
    path = finetune_teacher(
        args.out, cfg, teacher_path=args.teacher, progress=not args.no_progress, ship=args.ship
    )
    print(f"wrote {path}" + (f" (shipped as students/{args.ship})" if args.ship else ""))
    return 0


def _done(args: argparse.Namespace, path: Path) -> int:
    print(f"wrote {path}")
    if args.ship:
        _ship(path, args.ship)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from diffspeed.commands import parse_labels
    from diffspeed.distill.consistency import load_consistency, sample_consistency
    from diffspeed.distill.students import Recipe
    from diffspeed.eval.images import save_grid
    from diffspeed.models.teacher import load_teacher
    from diffspeed.solvers import seeded_noise

    torch.set_num_threads(args.threads)
    y = torch.tensor(parse_labels(args.labels)).repeat_interleave(args.per_label)
    seeds = list(range(args.seed, args.seed + len(y)))
    teacher = load_teacher(args.teacher)
    if args.lora:
        from diffspeed.distill.lora import load_lora

        student = (load_lora(args.lora, teacher), Recipe("lcm", (0.0,)))
    else:
        student = load_consistency(args.student)
    x = sample_consistency(
        student,
        seeded_noise(seeds, teacher.cond_spec.sample_shape),
        y,
        args.steps,
        guidance=args.guidance,
        generator=seeds,
    )
    save_grid(x, args.out, nrow=args.per_label, title=f"{args.steps}-step consistency sampling")
    print(f"wrote {args.out}")
    return 0


def _common(p: argparse.ArgumentParser, *, steps: int, lr: float) -> None:
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors")
    p.add_argument(
        "--data",
        default="digits",
        help="digits, a fine-tune style (italic, thick), or several joined, e.g. digits,thick",
    )
    p.add_argument("--parameterization", default="eps", choices=["eps", "v", "x0"])
    p.add_argument("--metric", default="pseudo_huber", choices=["pseudo_huber", "l2"])
    p.add_argument(
        "--strength", type=float, default=0.6, help="top of the trained range (lcm schedule)"
    )
    p.add_argument("--target-decay", type=float, default=0.95, help="EMA of the target net")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--ema-decay", type=float, default=0.99, help="EMA of the exported weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=0, help="1- and 4-step FDD every N steps")
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ship", default=None, help="also save into the package under this name")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``diffspeed consistency ...``."""
    p = sub.add_parser("consistency", help="consistency models: CD, CT, LCM, LCM-LoRA")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)

    m = methods.add_parser("cd", help="consistency distillation (Song et al. 2023)")
    _common(m, steps=1000, lr=1e-4)
    m.add_argument("--solver", default="heun", help="teacher ODE solver for one step")
    m.add_argument("--guidance", type=float, default=1.25, help="teacher CFG scale")
    m.add_argument("--n-start", type=int, default=18)
    m.add_argument("--n-end", type=int, default=18)
    m.add_argument("--groups", type=int, default=2)
    m.set_defaults(func=_cd)

    m = methods.add_parser("ct", help="consistency training, no teacher (improved CT)")
    _common(m, steps=1000, lr=1e-4)
    m.add_argument("--n-start", type=int, default=11)
    m.add_argument("--n-end", type=int, default=81)
    m.set_defaults(func=_ct, target_decay=0.0)

    for name, func, text in (
        ("lcm", _lcm, "latent consistency distillation with a guidance embedding"),
        ("lcm-lora", _lcm_lora, "LCM-LoRA: frozen teacher + LoRA (diffusers format)"),
    ):
        m = methods.add_parser(name, help=text)
        _common(m, steps=1000, lr=1e-4)
        m.add_argument("--k", type=int, default=20, help="skipping step (timesteps)")
        m.add_argument("--solver", default="ddim", help="teacher ODE solver for one step")
        m.add_argument("--guidance", type=float, default=1.25, help="sampling / LoRA CFG scale")
        m.add_argument("--groups", type=int, default=2)
        m.add_argument(
            "--anchor",
            type=float,
            default=0.0,
            help="weight of the trajectory term: also map states of cached teacher ODE "
            "trajectories (computed once into --out) to their ends (0: plain LCM loss)",
        )
        m.add_argument(
            "--anchor-top", type=float, default=0.5, help="share of those rows at the grid's top"
        )
        m.add_argument("--anchor-pairs", type=int, default=4000, help="number of trajectories")
        m.add_argument(
            "--anchor-substeps", type=int, default=2, help="teacher steps per grid interval"
        )
        if name == "lcm":
            m.add_argument("--w-range", default="1,2", help="trained guidance range")
            m.add_argument(
                "--init",
                type=Path,
                default=None,
                help="start from this student's network and parameterisation (e.g. a "
                "w-conditioned v student of 'distill guided') instead of the teacher's",
            )
        else:
            m.add_argument("--rank", type=int, default=8)
            m.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default rank)")
            m.add_argument(
                "--targets",
                default=None,
                help="module-name suffixes to adapt, comma-separated (peft target_modules; "
                "default: attention projections, resnet convs and time projections), or "
                "'all' for every conv / linear layer",
            )
            m.add_argument(
                "--from-lcm",
                default=None,
                help="fit the adapter to this trained full-weight LCM (a student path) at "
                "--guidance instead of the LCM loss; grid and boundary come from it. Use an "
                "eps LCM: an eps adapter cannot follow the shipped v LCM's one-step output",
            )
        m.set_defaults(func=func)

    m = methods.add_parser("finetune", help="fine-tune the teacher on a style (second model)")
    m.add_argument("--out", type=Path, required=True, help="output .safetensors")
    m.add_argument("--teacher", type=Path, default=None)
    m.add_argument(
        "--style",
        default="italic",
        choices=["italic", "thick"],
        help="italic: slanted digits the classifier still reads (the shipped second model)",
    )
    m.add_argument("--steps", type=int, default=300)
    m.add_argument("--lr", type=float, default=2e-4)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--ship", default=None, help="also store it (int8) in the package as NAME")
    m.set_defaults(func=_finetune)

    m = methods.add_parser("sample", help="few-step samples of a consistency student to a PNG")
    m.add_argument("--student", default="lcm", help="shipped name or student .safetensors")
    m.add_argument("--lora", type=Path, default=None, help="an LCM-LoRA directory instead")
    m.add_argument("--teacher", type=Path, default=None, help="base model for --lora")
    m.add_argument("--steps", type=int, default=4)
    m.add_argument("--guidance", type=float, default=None)
    m.add_argument("--labels", default="0-9")
    m.add_argument("--per-label", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--out", type=Path, default=Path("consistency.png"))
    m.set_defaults(func=_sample)

"""Prune the embedded digits teacher, distil it back, and score it against the unpruned one.

Two steps, so the fine-tunes can run in the background:

    # prune (Taylor or magnitude importance) and fine-tune from the teacher; writes
    # RUN/pruned (before the fine-tune), RUN/final (after) and the trainer's RUN/train/
    python benchmarks/prune_digits.py train runs/prune/taylor --importance taylor
    python benchmarks/prune_digits.py train runs/prune/magnitude --importance magnitude

    # (optional) the EMA of a fine-tune's last checkpoint as RUN/final, before it ends
    python benchmarks/prune_digits.py export runs/prune/taylor

    # MACs, parameters, FDD / accuracy on the 1000-sample report set (every model sampled with
    # the same solver, steps and guidance as the teacher row) and CPU latency (round-robin)
    python benchmarks/prune_digits.py eval runs/prune/taylor runs/prune/magnitude

FDD ratios are to the unpruned teacher sampled with the same solver and steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffspeed.compress.prune import (
    Prune,
    count_macs,
    finetune,
    load_pruned,
    prune,
    save_pruned,
    with_network,
)
from diffspeed.distill.trainer import TrainConfig
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.digits import load_digits
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import sample


def train(args: argparse.Namespace) -> None:
    """Prune, save, fine-tune, save."""
    teacher = load_teacher()
    x, y = load_digits("all")
    data = (x, {"class_labels": y})
    config = Prune(ratio=args.ratio, importance=args.importance, seed=args.seed)
    if args.init:  # continue from an earlier run's pruned (or fine-tuned) model
        student = with_network(teacher, load_pruned(args.init))
    else:
        student = prune(teacher, config, data=data)
    run = Path(args.run)
    save_pruned(student.model, run / "pruned")
    macs0, params0 = count_macs(teacher.model)
    macs, params = count_macs(student.model)
    print(
        f"{args.importance}: block_out_channels {list(student.model.config.block_out_channels)}, "
        f"MACs {macs / macs0:.3f}x, params {params / params0:.3f}x",
        flush=True,
    )
    tc = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(100, args.steps // 10),
        ema_decay=0.995,
        seed=args.seed,
        checkpoint_every=500,
    )
    net = finetune(
        student.model,
        teacher.model,
        data,
        run / "train",
        tc,
        alphas_cumprod=teacher.alphas_cumprod,
        uncond=teacher.cond_spec.uncond,
        max_weight=args.max_weight,
    )
    save_pruned(net, run / "final")
    (run / "run.json").write_text(
        json.dumps(
            {
                "prune": config.to_dict(),
                "train": tc.to_dict(),
                "max_weight": args.max_weight,
                "init": args.init,
            }
        )
    )
    print(f"wrote {run / 'final'}", flush=True)


def export(args: argparse.Namespace) -> None:
    """Write the EMA weights of a (running or interrupted) fine-tune's last checkpoint as
    RUN/final, so it can be scored before the schedule ends."""
    from diffspeed.models.io import load_weights

    run = Path(args.run)
    net = load_pruned(run / "pruned")
    tensors = load_weights(run / "train" / "checkpoint.safetensors")
    prefix = "emas.ema."
    net.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    save_pruned(net, run / "final")
    print(f"wrote {run / 'final'} (EMA at step {int(tensors['counter.step'])})")


def evaluate(args: argparse.Namespace) -> None:
    """Quality and latency of each run's pruned and fine-tuned models next to the teacher."""
    from diffspeed.bench.timing import round_robin

    teacher = load_teacher()
    ref = reference_set(ReferenceSpec(n=args.n), denoiser=teacher)
    labels = cond_labels(ref.cond)
    solver, steps, schedule = args.solver.split(",")
    models = {"teacher": teacher}
    for run in args.runs:
        for stage in ("pruned", "final"):
            if (Path(run) / stage).is_dir():
                models[f"{run}/{stage}"] = with_network(teacher, load_pruned(Path(run) / stage))
    macs0, params0 = count_macs(teacher.model)

    def run_sampler(den, noise, cond):
        g = guided_teacher(RECOMMENDED_GUIDANCE, den)
        return sample(g, noise, solver, int(steps), schedule, cond=cond)

    rows = {}
    with torch.inference_mode():
        for name, den in models.items():
            x = run_sampler(den, ref.noise, ref.cond)
            macs, params = count_macs(den.model)
            rows[name] = {
                "fdd": fdd(x),
                "acc": class_accuracy(x, labels),
                "macs": macs / macs0,
                "params": params / params0,
            }
            print(name, rows[name], flush=True)
        k = args.latency_batch
        noise, cond = ref.noise[:k], {key: v[:k] for key, v in ref.cond.items()}
        timed = [n for n in models if n == "teacher" or n.endswith("/final")]
        calls = {n: (lambda d=models[n]: run_sampler(d, noise, cond)) for n in timed}
        timing = round_robin(
            calls, baseline="teacher", device=torch.device("cpu"), rounds=args.rounds
        )
    base = rows["teacher"]["fdd"]
    print(
        f"\nsolver {args.solver}, guidance {RECOMMENDED_GUIDANCE}, n={args.n}, "
        f"latency batch {k}, {args.rounds} rounds"
    )
    print("| model | block widths | MACs | params | FDD | FDD / teacher | accuracy | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        widths = list(models[name].model.config.block_out_channels)
        t = timing.get(name)
        speed = f"{t.speedup:.2f}x ({min(t.ratios):.2f}-{max(t.ratios):.2f})" if t else "-"
        print(
            f"| {name} | {widths} | {r['macs']:.3f}x | {r['params']:.3f}x | {r['fdd']:.3f} | "
            f"{r['fdd'] / base:.3f}x | {r['acc']:.3f} | {speed} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="prune the teacher and fine-tune the pruned model")
    t.add_argument("run", help="run directory")
    t.add_argument("--importance", default="taylor", choices=("taylor", "magnitude"))
    t.add_argument("--ratio", type=float, default=0.3)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--init", default="", help="start from this pruned-model folder instead")
    t.add_argument(
        "--max-weight", type=float, default=100.0, help="cap of the loss weight 1 + sigma^2"
    )
    x = sub.add_parser("export", help="write a running fine-tune's last checkpoint (EMA)")
    x.add_argument("run", help="run directory")
    e = sub.add_parser("eval", help="score runs against the teacher")
    e.add_argument("runs", nargs="+")
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--solver", default="dpmpp_2m,20,karras", help="SOLVER,STEPS,SCHEDULE")
    e.add_argument("--latency-batch", type=int, default=100)
    e.add_argument("--rounds", type=int, default=5)
    for p in (t, x, e):
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"train": train, "export": export, "eval": evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()

"""Consistency models on the embedded teacher: FDD, class accuracy and latency at 1/2/4/8 steps.

Rows, all from the reference set's noises and conditions (``ReferenceSpec(n)``, guidance as the
reference), the re-noising of multistep sampling seeded per sample:

* the teacher's reference sampler (Heun, 100 Karras steps) — the FDD every ratio divides by;
* the teacher with guided DDIM at the same step counts (training-free, two forwards per step);
* CD, CT, LCM (w-conditioned, sampled at the reference's guidance) and LCM-LoRA students;
* shipped progressive / guided-distilled students, when present;
* the second model: the style fine-tune's own reference, its DDIM, and the *base* teacher's
  LCM-LoRA applied to it — FDD against the style's data (``models.styles.style_features``).

Latency: one image, one warm-up, median of ``--repeats`` timed runs, torch threads fixed.

    python benchmarks/consistency.py --n 1000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from diffspeed.distill.consistency import load_consistency, sample_consistency
from diffspeed.distill.finetune import finetune_style
from diffspeed.distill.lora import load_lora
from diffspeed.distill.students import STUDENTS_DIR, Recipe, sample_student, shipped_students
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import ReferenceSpec, reference_set
from diffspeed.models.styles import style_features
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import sample, seeded_noise


def latency_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def chunked(fn, noise: torch.Tensor, cond: dict, seeds: list[int], select, bs: int = 250):
    """Run ``fn(noise, cond, seeds)`` in batches (per-sample seeds: batch-independent);
    ``select(cond, slice)`` picks a batch's conditions (the model's ``cond_spec.select``)."""
    out = [
        fn(noise[i : i + bs], select(cond, slice(i, i + bs)), seeds[i : i + bs])
        for i in range(0, len(seeds), bs)
    ]
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="samples (the reference set's size)")
    ap.add_argument("--ft-n", type=int, default=500, help="samples for the fine-tuned model")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cd", default="cd", help="CD student (shipped name or path)")
    ap.add_argument("--ct", default="ct")
    ap.add_argument("--lcm", default="lcm")
    ap.add_argument("--lora", default=str(STUDENTS_DIR / "lcm-lora"))
    ap.add_argument("--finetuned", default=str(STUDENTS_DIR / "teacher-italic.safetensors"),
                    help="the second model: a style fine-tune of the teacher")  # fmt: skip
    ap.add_argument("--fp32", default=None, help="an fp32 student to compare with --lcm (int8)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]

    spec = ReferenceSpec(n=args.n)
    teacher = load_teacher()
    cspec = teacher.cond_spec
    # the reference set's noises and conditions; its samples are needed only for the ref row
    noise, cond, seeds = (
        seeded_noise(spec.seeds(), cspec.sample_shape),
        cspec.example_cond(spec.n),
        spec.seeds(),
    )
    labels = cond_labels(cond)
    one = (noise[:1], cspec.select(cond, slice(0, 1)), seeds[:1])
    guided = guided_teacher(spec.guidance, teacher)
    rows: list[dict[str, Any]] = []

    def add(
        group: str,
        name: str,
        k: int | str,
        x: torch.Tensor,
        ms: float,
        labels_: torch.Tensor,
        feats=None,
    ) -> None:
        f = fdd(x, feats)
        rows.append(
            {
                "group": group,
                "method": name,
                "steps": k,
                "fdd": f,
                "acc": class_accuracy(x, labels_),
                "ms": ms,
            }
        )
        print(
            f"{group:8s} {name:28s} {k!s:>4s} FDD {f:7.3f} acc {rows[-1]['acc']:.3f} {ms:8.1f} ms",
            flush=True,
        )

    def measure(group, name, k, fn, set_=None, feats=None) -> None:
        """Score ``fn`` on a whole sample set and time it on one image."""
        n_, c_, s_ = set_ or (noise, cond, seeds)
        add(group, name, k, chunked(fn, n_, c_, s_, cspec.select),
            latency_ms(lambda: fn(*one), args.repeats), cond_labels(c_), feats)  # fmt: skip

    # training-free DDIM on the teacher
    for k in steps:

        def ddim(n, c, s, k=k):
            return sample(guided, n, "ddim", k, "trailing", cond=c)

        measure("base", "teacher guided DDIM", k, ddim)

    # consistency students
    students: list[tuple[str, Any]] = []
    for label, name in (
        ("CD", args.cd),
        ("CT", args.ct),
        ("LCM", args.lcm),
        ("LCM int8 vs fp32: fp32", args.fp32),
    ):
        if name is None:
            continue
        try:
            students.append((label, load_consistency(name)))
        except Exception as e:  # noqa: BLE001 - a missing student is reported, not fatal
            print(f"skip {label} ({name}): {e}")
    if Path(args.lora).exists():
        students.append(("LCM-LoRA", (load_lora(args.lora, teacher), Recipe("lcm", (0.0,)))))
    for label, student in students:
        den, recipe = student
        w = spec.guidance if recipe.w_conditioned else None
        for k in steps:

            def run(n, c, s, k=k, student=student, w=w):
                return sample_consistency(student, n, c, k, guidance=w, generator=s)

            measure("base", label, k, run)

    # distilled students of the step-distillation area, for comparison
    for name in shipped_students():
        if not name.startswith(("progressive", "guided")):
            continue
        try:
            from diffspeed.distill.students import load_student

            st = load_student(name)
            w = spec.guidance if st[1].w_conditioned else None
            if not st[1].w_conditioned and st[1].guidance != spec.guidance:
                print(f"skip {name}: bakes in guidance {st[1].guidance}")
                continue

            def prun(n, c, s, st=st, w=w):
                return sample_student(st, n, c, guidance=w)

            measure("base", name, st[1].steps, prun)
        except Exception as e:  # noqa: BLE001
            print(f"skip {name}: {e}")

    # the teacher's reference sampler (computed last: it is cached on disk once computed)
    ref = reference_set(spec, progress=True)

    def ref_run(n, c, s):
        return sample(guided, n, spec.solver, spec.steps, spec.schedule, cond=c)

    add(
        "base",
        f"teacher {spec.solver}-{spec.steps} (ref)",
        2 * spec.steps - 1,
        ref.samples,
        latency_ms(lambda: ref_run(*one), 1),
        labels,
    )

    # the second model: style fine-tune + the base teacher's LCM-LoRA
    if Path(args.finetuned).is_file():
        fspec = ReferenceSpec(n=args.ft_n)
        fref = reference_set(fspec, teacher_path=args.finetuned, progress=True)
        style = finetune_style(args.finetuned)
        feats = style_features(style)
        ft = load_teacher(args.finetuned)
        fguided = guided_teacher(fspec.guidance, ft)
        fnoise, fcond, fseeds = fref.noise, fref.cond, fspec.seeds()
        add(
            style,
            f"fine-tune {fspec.solver}-{fspec.steps} (ref)",
            2 * fspec.steps - 1,
            fref.samples,
            float("nan"),
            cond_labels(fcond),
            feats,
        )
        # the base teacher's own samples scored against the style: how far the fine-tune moved
        n_ft = args.ft_n
        add(style, "base teacher (not fine-tuned)", 2 * spec.steps - 1, ref.samples[:n_ft],
            float("nan"), labels[:n_ft], feats)  # fmt: skip
        lora_ft = (load_lora(args.lora, ft), Recipe("lcm", (0.0,)))
        for k in steps:

            def fddim(n, c, s, k=k):
                return sample(fguided, n, "ddim", k, "trailing", cond=c)

            def flora(n, c, s, k=k):
                return sample_consistency(lora_ft, n, c, k, generator=s)

            measure(style, "fine-tune guided DDIM", k, fddim, (fnoise, fcond, fseeds), feats=feats)
            measure(
                style,
                "fine-tune + base LCM-LoRA",
                k,
                flora,
                (fnoise, fcond, fseeds),
                feats=feats,
            )

    print()
    print("| model | method | steps | FDD | FDD / ref | acc % | ms/img |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ref_fdd = {r["group"]: r["fdd"] for r in rows if r["method"].endswith("(ref)")}
    for r in rows:
        r["ratio"] = r["fdd"] / ref_fdd[r["group"]]
        print(
            f"| {r['group']} | {r['method']} | {r['steps']} | {r['fdd']:.2f} | "
            f"{r['ratio']:.2f} | {100 * r['acc']:.1f} | {r['ms']:.1f} |"
        )
    print(
        f"\nthreads {args.threads}, n {args.n} (fine-tune n {args.ft_n}), reference "
        f"{spec.solver}-{spec.steps} {spec.schedule} w={spec.guidance}, digest {ref.digest}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

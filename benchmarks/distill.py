"""Distilled students vs the teacher's reference and vs training-free solvers at the same NFE.

For each shipped student (progressive-8/4/2/1, guided-4/2/1): FDD and class accuracy on the
reference set's noises and conditions (ReferenceSpec(n=1000): the teacher, guided w=1.25, Heun 100
Karras steps), the FDD ratio to the reference samples' FDD and the target; the best of several
training-free solvers on the guided teacher at the same NFE; the int8-stored student against
its fp32 weights (when the training run directory is given); and the cost of one guided step
(teacher: cond + uncond batched, i.e. two forwards) against one guided-student step (one
forward), timed side by side (warm-up, median of repeats, fixed threads).

    python benchmarks/distill.py --runs runs/distill/final
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffspeed.distill.students import load_student, sample_student, shipped_students
from diffspeed.errors import DiffspeedError
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import ReferenceSpec, reference_set
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import sample
from diffspeed.solvers.registry import SOLVERS

#: Target FDD ratio to the teacher's reference FDD per student step count.
TARGETS = {4: 1.1, 2: 1.25, 1: 1.6}
#: Training-free candidates (solver, schedule) compared at each NFE.
BASELINES = [
    ("ddim", "trailing"),
    ("dpmpp_2m", "karras"),
    ("dpmpp_2m", "logsnr"),
    ("unipc", "logsnr"),
    ("ipndm", "karras"),
]


def batched(fn, noise, cond, batch, select):
    """``fn(noise, cond)`` over batches; ``select(cond, slice)`` (the model's
    ``cond_spec.select``) picks a batch's conditions."""
    return torch.cat(
        [
            fn(noise[i : i + batch], select(cond, slice(i, i + batch)))
            for i in range(0, len(noise), batch)
        ]
    )


def best_solver(teacher, noise, cond, nfe: int, batch: int) -> tuple[str, float, float]:
    """The lowest-FDD training-free (solver, schedule) on the guided teacher at ``nfe``."""
    best = ("-", float("inf"), 0.0)
    for solver, schedule in BASELINES:
        steps = SOLVERS[solver].steps_for_nfe(nfe)
        if SOLVERS[solver].nfe(steps) != nfe:
            continue
        try:
            x = batched(
                lambda z, c, s=solver, sc=schedule, st=steps: sample(teacher, z, s, st, sc, cond=c),
                noise,
                cond,
                batch,
                teacher.cond_spec.select,
            )
        except DiffspeedError:
            continue
        score = fdd(x)
        if score < best[1]:
            best = (f"{solver}/{schedule}", score, class_accuracy(x, cond_labels(cond)))
    return best


def step_cost(student, teacher, batch: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one guided step: student (one forward) vs teacher (cond + uncond)."""
    den, recipe = student
    x = torch.randn(batch, *teacher.cond_spec.sample_shape)
    cond = teacher.cond_spec.example_cond(batch)
    sigma = torch.full((batch,), 10.0)
    cond_s = recipe.cond(cond)

    def timed(fn) -> float:
        fn()  # warm-up
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    with torch.inference_mode():
        ts = timed(lambda: den(x, sigma, **cond_s))
        tt = timed(lambda: teacher(x, sigma, **cond))
    return ts, tt


def baselines_at(teacher, spec, nfes, batch, cache: Path | None) -> dict[int, list]:
    """Best training-free solver per NFE on the reference noises / conditions (JSON-cached)."""
    from diffspeed.solvers import seeded_noise

    known: dict[int, list] = {}
    if cache is not None and cache.is_file():
        known = {int(k): v for k, v in json.loads(cache.read_text()).items()}
    cspec = teacher.cond_spec
    noise, cond = seeded_noise(spec.seeds(), cspec.sample_shape), cspec.example_cond(spec.n)
    for nfe in nfes:
        if nfe not in known:
            known[nfe] = list(best_solver(teacher, noise, cond, nfe, batch))
            print(f"baseline NFE {nfe}: {known[nfe]}", flush=True)
            if cache is not None:
                cache.write_text(json.dumps(known, indent=1))
    return known


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="reference samples (the report set)")
    p.add_argument("--runs", type=Path, default=None, help="training run dir (fp32 students)")
    p.add_argument("--teacher", type=Path, default=None, help="teacher .safetensors")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baselines-cache", type=Path, default=None, help="JSON cache of baselines")
    p.add_argument("--baselines-only", action="store_true", help="compute the baselines, stop")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    spec = ReferenceSpec(n=a.n)
    w = spec.guidance
    teacher = guided_teacher(w, load_teacher(a.teacher))
    baselines = baselines_at(teacher, spec, (1, 2, 4, 8), a.batch, a.baselines_cache)
    if a.baselines_only:
        return
    ref = reference_set(spec, teacher_path=a.teacher)
    labels = cond_labels(ref.cond)
    ref_fdd, ref_acc = fdd(ref.samples), class_accuracy(ref.samples, labels)
    print(
        f"reference: n={a.n}, guided w={w}, {spec.solver} {spec.steps} {spec.schedule} "
        f"steps: FDD {ref_fdd:.3f}, accuracy {ref_acc:.3f} (digest {ref.digest})"
    )
    print(f"threads {a.threads}, torch {torch.__version__}\n")

    names = [s for s in shipped_students() if s.split("-")[0] in ("progressive", "guided")]
    rows = []
    print(
        "| student | steps (NFE) | FDD | FDD / ref | target | accuracy "
        "| best solver at same NFE (FDD, acc) | beats it |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted(names, key=lambda s: (s.split("-")[0], -int(s.split("-")[1]))):
        student = load_student(name)
        steps = student[1].steps
        x = batched(
            lambda z, c, st=student: sample_student(st, z, c, guidance=w),
            ref.noise,
            ref.cond,
            a.batch,
            teacher.cond_spec.select,
        )
        f, acc = fdd(x), class_accuracy(x, labels)
        bname, bfdd, bacc = baselines[steps]
        target = TARGETS.get(steps)
        ok = "" if target is None else (" (met)" if f / ref_fdd <= target else " (missed)")
        print(
            f"| {name} | {steps} | {f:.3f} | {f / ref_fdd:.3f} | "
            f"{'-' if target is None else f'<= {target}'}{ok} | {acc:.3f} | "
            f"{bname} ({bfdd:.3f}, {bacc:.3f}) | {'yes' if f < bfdd else 'no'} |",
            flush=True,
        )
        rows.append((name, student, f))

    if a.runs is not None:
        print("\nint8 storage vs fp32 weights (same noise):\n")
        print("| student | FDD int8 (shipped) | FDD fp32 | difference |")
        print("|---|---|---|---|")
        for name, _, f in rows:
            method, steps = name.split("-")
            path = a.runs / method / f"round-{steps}" / "student.safetensors"
            if not path.is_file():
                continue
            fp32 = load_student(path)
            x = batched(
                lambda z, c, st=fp32: sample_student(st, z, c, guidance=w),
                ref.noise,
                ref.cond,
                a.batch,
                teacher.cond_spec.select,
            )
            f32 = fdd(x)
            print(f"| {name} | {f:.3f} | {f32:.3f} | {f - f32:+.3f} |", flush=True)

    guided = [r for r in rows if r[1][1].w_conditioned]
    if guided:
        ts, tt = step_cost(guided[0][1], teacher, 64, a.repeats)
        print(
            f"\none guided step, batch 64 (median of {a.repeats}): "
            f"guided student {ts * 1e3:.1f} ms (1 forward), "
            f"guided teacher {tt * 1e3:.1f} ms (cond+uncond); ratio {tt / ts:.2f}x"
        )


if __name__ == "__main__":
    main()

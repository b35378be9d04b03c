"""FDD and class accuracy of any student file (or the teacher's DDIM) on the report set.

Scores training-run students that are not shipped (e.g. a round of a chain, a stage-1 student,
an experimental consistency model) on the same noises and conditions as the shipped ones
(``ReferenceSpec(n)``, guidance ``RECOMMENDED_GUIDANCE``):

    python benchmarks/student_fdd.py --ddim 16,32,64
    python benchmarks/student_fdd.py runs/s2/progressive/round-1/student.safetensors
    python benchmarks/student_fdd.py --consistency runs/s2/lcm-v/student.safetensors
    python benchmarks/student_fdd.py --ode dpmpp_2m,20,karras runs/g/stage1/student.safetensors
    python benchmarks/student_fdd.py --consistency lcm --steps 1 --strengths 1,0.8,0.6
    python benchmarks/student_fdd.py --lora runs/s5/lora-kd8k/lora --steps 2,4,8
"""

from __future__ import annotations

import argparse
import itertools

import torch

from diffspeed.distill import sample_student
from diffspeed.distill.consistency import load_consistency, sample_consistency
from diffspeed.distill.lora import load_lora
from diffspeed.distill.students import load_student
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.teacher import cond_labels, guided_teacher, load_teacher
from diffspeed.solvers import sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="*", help="step-distilled student .safetensors / names")
    ap.add_argument("--consistency", nargs="*", default=[], help="consistency students")
    ap.add_argument("--lora", nargs="*", default=[], help="LCM-LoRA directories (on the teacher)")
    ap.add_argument("--ddim", default="", help="teacher guided DDIM (trailing) step counts")
    ap.add_argument(
        "--ode",
        default="",
        help="SOLVER,STEPS,SCHEDULE: sample the teacher and every student with this solver "
        "instead of their recipes (how close a student's own ODE is to the teacher's)",
    )
    ap.add_argument("--steps", default="1,2,4,8", help="consistency / LoRA step counts")
    ap.add_argument(
        "--strengths",
        default="",
        help="consistency students: start the lcm schedule at these strengths (a lower start "
        "than trained, from pure noise there) instead of the trained one",
    )
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher()
    ref = reference_set(ReferenceSpec(n=args.n), denoiser=teacher)
    ref_fdd = fdd(ref.samples)
    print(f"reference: n={args.n}, FDD {ref_fdd:.4f}", flush=True)
    noise, ref_cond = ref.noise, ref.cond
    labels = cond_labels(ref_cond)

    def report(name: str, x: torch.Tensor) -> None:
        f = fdd(x)
        acc = class_accuracy(x, labels)
        print(f"{name}: FDD {f:.4f} ({f / ref_fdd:.3f}x reference), accuracy {acc:.3f}", flush=True)

    with torch.inference_mode():
        den = guided_teacher(RECOMMENDED_GUIDANCE, teacher)
        for k in (int(v) for v in args.ddim.split(",") if v):
            x = sample(den, noise, "ddim", k, "trailing", cond=ref_cond)
            report(f"teacher guided DDIM-{k}", x)
        if args.ode:
            solver, steps, schedule = args.ode.split(",")

            def ode(d, cond):
                return sample(d, noise, solver, int(steps), schedule, cond=cond)

            report(f"teacher guided {args.ode}", ode(den, ref_cond))
        for name in args.students:
            if args.ode:
                student, recipe = load_student(name)
                report(f"{name} {args.ode}", ode(student, recipe.cond(ref_cond)))
            else:
                report(name, sample_student(name, noise, ref_cond))
        for name in args.consistency:
            den, recipe = load_consistency(name)
            cond = recipe.cond(ref_cond, RECOMMENDED_GUIDANCE)
            strengths = [float(v) for v in args.strengths.split(",") if v] or [den.strength]
            for strength, k in itertools.product(strengths, map(int, args.steps.split(","))):
                x = sample(den, noise, "lcm", k, "lcm", cond=cond, generator=list(range(args.n)),
                           schedule_options={"strength": strength})  # fmt: skip
                at = f", strength {strength}" if args.strengths else ""
                report(f"{name} {k} steps{at}", x)
        for path in args.lora:
            den = load_lora(path, teacher)
            for k in map(int, args.steps.split(",")):
                x = sample_consistency(den, noise, ref_cond, k, generator=list(range(args.n)))
                report(f"{path} {k} steps", x)


if __name__ == "__main__":
    main()

"""How well does a base model's acceleration transfer to a fine-tune? The ceiling for LCM-LoRA.

An LCM-LoRA adapter is trained on the base teacher and plugged into a fine-tune of it. This
script compares, on the fine-tune's own reference set (FDD against the style's data, ratio to
the fine-tune's Heun-100 reference):

* ``fine-tune + adapter``: each ``--lora`` directory fused into the fine-tune;
* ``fine-tune + full LCM delta``: task arithmetic with the full-weight LCM the adapters can be
  distilled from, ``W_ft + (W_lcm - W_base)`` for every weight the three share (the LCM's
  guidance-embedding MLP is kept as is). This is the most a weight update learned on the base
  alone carries over here, whatever its rank;
* ``full LCM on the base weights`` scored against the style: how far the styles are apart.

    python benchmarks/lora_transfer.py --lora runs/s5/lora-kd/lora \
        --lcm runs/s3/lcm-heun/student.safetensors
"""

from __future__ import annotations

import argparse
import copy

import torch

from diffspeed.distill.consistency import load_consistency, sample_consistency
from diffspeed.distill.finetune import finetune_style
from diffspeed.distill.lora import load_lora
from diffspeed.distill.students import STUDENTS_DIR
from diffspeed.eval.metrics import class_accuracy, fdd
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.styles import style_features
from diffspeed.models.teacher import cond_labels, load_teacher


def transplant(lcm, base, finetune):
    """A copy of the consistency model ``lcm`` whose shared weights are moved by the
    fine-tune's change: ``W_ft + (W_lcm - W_base)``."""
    if lcm.inner.prediction != base.prediction:
        raise SystemExit(
            f"the LCM predicts {lcm.inner.prediction!r} and the base teacher {base.prediction!r}: "
            "their weight difference is not an update of the base; pass an LCM trained from "
            "the base teacher's own parameterisation"
        )
    out = copy.deepcopy(lcm)
    b, f = base.model.state_dict(), finetune.model.state_dict()
    new = {}
    for key, w in out.inner.model.state_dict().items():
        # a w-conditioned UNet nests the base UNet under "unet." and its labels under ".labels"
        k = key.removeprefix("unet.").replace("class_embedding.labels.", "class_embedding.")
        new[key] = f[k] + (w - b[k]) if k in b else w
    out.inner.model.load_state_dict(new)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lora", nargs="*", default=[], help="adapter directories")
    ap.add_argument(
        "--lcm",
        required=True,
        help="the full-weight LCM the adapters were fitted to (path or shipped name); it must "
        "predict what the base teacher predicts, e.g. runs/s3/lcm-heun/student.safetensors",
    )
    ap.add_argument("--finetuned", default=str(STUDENTS_DIR / "teacher-italic.safetensors"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", default="2,4,8")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = ReferenceSpec(n=args.n)
    ref = reference_set(spec, teacher_path=args.finetuned)
    style = finetune_style(args.finetuned)
    feats = style_features(style)
    ref_fdd = fdd(ref.samples, feats)
    base, ft = load_teacher(), load_teacher(args.finetuned)
    lcm = load_consistency(args.lcm)
    models = [(f"fine-tune + {p}", load_lora(p, ft), None) for p in args.lora]
    models.append(("fine-tune + full LCM delta", transplant(lcm[0], base, ft), lcm[1]))
    models.append(("full LCM on the base weights", *lcm))

    print(f"{style} fine-tune, {args.n} samples, reference FDD {ref_fdd:.3f}\n")
    print("| model | steps | FDD | FDD / ref | acc % |")
    print("|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name, den, recipe in models:
            student = den if recipe is None else (den, recipe)
            guidance = None if recipe is None else RECOMMENDED_GUIDANCE
            for k in (int(s) for s in args.steps.split(",")):
                x = sample_consistency(
                    student, ref.noise, ref.cond, k, guidance=guidance, generator=spec.seeds()
                )
                f = fdd(x, feats)
                acc = 100 * class_accuracy(x, cond_labels(ref.cond))
                print(f"| {name} | {k} | {f:.3f} | {f / ref_fdd:.2f} | {acc:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""`diffspeed tune --quality psnr=30` on a diffusers model it has never seen, side by side with
diffusers' own schedulers.

The model: an unconditional ``UNet2DModel`` on the 8x8 digits with **v-prediction** and
**cosine betas** ("squaredcos_cap_v2") - the embedded teacher is eps-prediction on linear
betas - trained briefly here (``--train-steps``) and saved as a ``DDPMPipeline`` folder
(safetensors). Then:

1. ``diffspeed.tune`` on that folder (as ``diffspeed tune --model FOLDER``), PSNR >= 30 dB to
   the model's own Heun-100 reference from the same noise; no exposure-bias shift (a pipeline
   cannot apply it) and no students (there are none for this model). The tuned file is applied
   to the pipeline with ``diffspeed.apply(pipe, file)``.
2. Every deterministic diffusers scheduler, built from the pipeline's own scheduler config
   (so v-prediction and the cosine betas carry over) with each fixed timestep spacing
   (leading / linspace / trailing), driven by its native loop (``scale_model_input`` ->
   UNet -> ``step``) on the same validation noises; for each, the fewest steps whose PSNR to
   the same reference samples reaches the bar.

    python benchmarks/tune_diffusers.py --out benchmarks/results/tune_diffusers.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

import diffspeed
from diffspeed.eval.metrics import psnr
from diffspeed.eval.reference import ReferenceSpec, reference_set
from diffspeed.tune import SearchSpace
from diffspeed.tune.search import load_tune_model

SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "DPMSolverSinglestepScheduler", "PNDMScheduler")  # fmt: skip
SPACINGS = ("leading", "linspace", "trailing")


def build_model(folder: Path, steps: int, seed: int = 0) -> None:
    """Train the v-prediction cosine UNet on the digits and save a DDPMPipeline folder."""
    import diffusers

    from diffspeed.models.digits import load_digits

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                                    prediction_type="v_prediction")  # fmt: skip
    x0_all = load_digits()[0].float()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.05)
    t0 = time.perf_counter()
    for step in range(steps):
        x0 = x0_all[torch.randint(len(x0_all), (128,))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (128,))
        x_t = sched.add_noise(x0, noise, t)
        loss = (unet(x_t, t).sample - sched.get_velocity(x0, noise, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        if step % 500 == 0:
            print(f"train step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    unet.eval()
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)


def native_loop(pipe, scheduler, noise: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """diffusers' own sampling loop with ``scheduler`` on the pipeline's UNet; (x0, NFE)."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    calls = 0
    with torch.inference_mode():
        for t in scheduler.timesteps:
            out = pipe.unet(scheduler.scale_model_input(x, t), t).sample
            calls += 1
            x = scheduler.step(out, t, x).prev_sample
    return x, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", type=Path, default=Path("runs/tune/vpred-cosine"))
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--quality", default="psnr=30")
    ap.add_argument("--validation", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_diffusers.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    if not (args.folder / "model_index.json").is_file():
        build_model(args.folder, args.train_steps)
    bar = float(args.quality.split("=")[1])

    den = load_tune_model(str(args.folder))
    t0 = time.perf_counter()
    res = diffspeed.tune(den, args.quality, space=SearchSpace(time_shifts=()),
                         validation=args.validation, progress=True)  # fmt: skip
    wall = time.perf_counter() - t0
    path = res.save(args.folder.parent / "vpred-cosine-tuned.json")
    res.write_report(args.folder.parent / "report-vpred-cosine")
    print(res.message)

    val = reference_set(ReferenceSpec(n=args.validation, guidance=1.0), denoiser=den)
    pipe = diffusers.DDPMPipeline.from_pretrained(args.folder, use_safetensors=True)
    noise = val.noise
    handle = diffspeed.apply(pipe, path)
    x, calls = native_loop(pipe, pipe.scheduler, noise, handle.call_kwargs["num_inference_steps"])
    tuned_pipe_psnr = psnr(x, val.samples)
    handle.remove()

    rows = []
    for name in SCHEDULERS:
        cls = getattr(diffusers, name)
        for spacing in SPACINGS:
            sched = cls.from_config(pipe.scheduler.config, timestep_spacing=spacing)
            found = None
            for steps in range(1, args.max_steps + 1):
                try:
                    x, nfe = native_loop(pipe, sched, noise, steps)
                except (ValueError, IndexError, RuntimeError):
                    continue
                value = psnr(x, val.samples)
                if value >= bar:
                    found = (steps, nfe, value)
                    break
            rows.append((name, spacing, found))
            print(name, spacing, found)
    met = sorted((r for r in rows if r[2]), key=lambda r: (r[2][1], -r[2][2]))
    rep = res.tuned.report
    cost = rep["search_cost"]
    lines = [
        "# diffspeed tune on an unseen diffusers model (v-prediction, cosine betas), "
        f"{args.quality}",
        "",
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
        f"torch threads {args.threads}; validation: {args.validation} samples (seeds "
        f"0..{args.validation - 1}), PSNR to the model's Heun-100 Karras reference from the "
        "same noise; calibration noises are disjoint (seeds from 2e9)",
        "",
        f"- tuned: **{rep['label']}**, {rep['nfe']} NFE; PSNR {rep['tuning']['value']:.2f} dB on "
        f"{rep['tuning']['noises']} calibration noises -> {rep['validation']['value']:.2f} dB on "
        f"validation (shift {rep['shift']:+.2f} dB); applied to the DDPMPipeline with "
        f"diffspeed.apply and run through diffusers' loop: {calls} UNet calls, "
        f"{tuned_pipe_psnr:.2f} dB",
        f"- search: {cost['candidates']} candidates, {cost['nfe']} network calls "
        f"({cost['sample_evals']} sample evaluations), {wall / 60:.1f} min wall, "
        f"{cost['cpu_seconds'] / 60:.1f} CPU-min on {cost['threads']} threads; rejected in "
        f"validation: {', '.join(rep['rejected_in_validation']) or 'none'}",
        "",
        f"| configuration | spacing | steps | NFE | PSNR dB (>= {bar:g}) |",
        "|---|---|---|---|---|",
        f"| diffspeed tune: {rep['label']} | - | - | {rep['nfe']} | "
        f"{rep['validation']['value']:.2f} |",
    ]
    for name, spacing, found in met:
        lines.append(f"| diffusers {name} | {spacing} | {found[0]} | {found[1]} | {found[2]:.2f} |")
    for name, spacing, found in rows:
        if not found:
            lines.append(f"| diffusers {name} | {spacing} | > {args.max_steps} | - | not reached |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.folder.parent / "tune_diffusers.json").write_text(json.dumps(
        {"tuned": rep, "pipeline_psnr": tuned_pipe_psnr,
         "diffusers": [[n, s, f] for n, s, f in rows]}, indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()

"""Quantization and optimization of the embedded digits teacher: FDD ratio and CPU latency.

Every row samples the 1000-sample report set (reference seeds 0..999, guidance
``RECOMMENDED_GUIDANCE``) with the same solver and steps; FDD is reported as a ratio to the
uncompressed teacher's FDD with that solver and steps, PSNR against its samples. Latency of
every row is measured side by side (``bench.timing.round_robin``: each round times every row
once in a shuffled order; speedup = median of per-round ratios to the fp32 row).

    python benchmarks/compress_cpu.py --threads 1
    python benchmarks/compress_cpu.py --threads 1 --n 200 --qat-steps 100   # quicker
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import diffspeed
from diffspeed.bench.timing import round_robin
from diffspeed.compress import (
    Optimize,
    Quantize,
    calibrate,
    calibrate_forward,
    optimize,
    quantize,
)
from diffspeed.compress.qat import QAT, qat
from diffspeed.compress.quantize import module_bytes
from diffspeed.core.contract import network_of
from diffspeed.eval.metrics import class_accuracy, fdd, psnr
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE, ReferenceSpec, reference_set
from diffspeed.models.digits import load_digits
from diffspeed.models.teacher import cond_labels, guided_teacher, label_cond, load_teacher

#: Layers the issue names as sensitive (first / last conv, time embedding), kept for int4.
EDGES = ("conv_in", "conv_out", "time_embedding")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="report-set samples scored")
    p.add_argument("--solver", default="ddim")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--groups", type=int, default=4, help="w8a8 noise-level groups")
    p.add_argument("--qat-steps", type=int, default=400)
    p.add_argument("--timing-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compile", action="store_true", help="add a torch.compile row (slow)")
    p.add_argument("--out", type=Path, default=Path("docs/results/compress.md"))
    p.add_argument("--qat-dir", type=Path, default=Path("runs/compress-qat"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    teacher = load_teacher()
    ref = reference_set(ReferenceSpec(), denoiser=teacher)
    spec = teacher.cond_spec
    noise, cond = ref.noise[: args.n], spec.select(ref.cond, slice(0, args.n))
    labels = cond_labels(cond)
    report_seeds = set(ReferenceSpec().seeds())

    def guided(den):
        return guided_teacher(RECOMMENDED_GUIDANCE, den)

    def generate(den) -> torch.Tensor:
        outs = []
        for i in range(0, args.n, 250):
            sl = slice(i, i + 250)
            c = spec.select(cond, sl)
            outs.append(diffspeed.sample(guided(den), noise[sl], args.solver, args.steps, cond=c))
        return torch.cat(outs)

    rows: dict[str, tuple[object, str]] = {"fp32 (uncompressed)": (teacher, "-")}

    def quantized(cfg: Quantize, calib=None, base=None):
        den = copy.deepcopy(base if base is not None else teacher)
        handle = quantize(den, cfg, calibration=calib)
        kinds = sorted(set(handle.layers.values()))
        return den, ", ".join(kinds)

    rows["int8 weight-only"] = quantized(Quantize(format="int8_weight"))
    rows["int8 dynamic act."] = quantized(Quantize(format="int8_dynamic"))
    rows["int4 weight-only (g32)"] = quantized(Quantize(format="int4_weight"))
    rows["int4 weight-only, edges fp32"] = quantized(Quantize(format="int4_weight", keep=EDGES))

    # QAT: short fine-tune with int4 fake-quant (edges kept), distilled from the fp32 teacher
    x0, y = load_digits("train")
    t0 = time.time()
    qcfg = QAT(steps=args.qat_steps, keep=EDGES)
    student = qat(teacher, qcfg, x0, label_cond(y), args.qat_dir)
    qat_s = time.time() - t0
    rows["int4 weight-only, edges fp32, QAT"] = quantized(qcfg.quantize_config, base=student)

    # W8A8: naive forward-process calibration vs the sampler's own trajectories
    perm = torch.randperm(x0.shape[0], generator=torch.Generator().manual_seed(0))
    data = x0[perm[: args.calib_samples]], label_cond(y[perm[: args.calib_samples]])
    calib_seen = []
    for keep in ((), EDGES):
        tail = ", edges fp32" if keep else ""
        naive = Quantize(
            format="w8a8", calibration="forward", calib_samples=args.calib_samples, keep=keep
        )
        cal_f = calibrate_forward(teacher, naive, *data)
        rows[f"w8a8, forward-process min-max (naive){tail}"] = quantized(naive, cal_f)
        for groups in sorted({1, args.groups}) if not keep else (args.groups,):
            cfg = Quantize(
                format="w8a8", act_groups=groups, calib_samples=args.calib_samples, keep=keep
            )
            cal = calibrate(guided(teacher), cfg, solver=args.solver, steps=args.steps)
            calib_seen.extend(cal.seeds)
            rows[f"w8a8, trajectory, {groups} group(s){tail}"] = quantized(cfg, cal)
    cfg = Quantize(
        format="w8a8", act_groups=args.groups, calib_samples=args.calib_samples, keep_sensitive=3
    )
    cal = calibrate(guided(teacher), cfg, solver=args.solver, steps=args.steps)
    rows[f"w8a8, trajectory, {args.groups} groups, 3 most sensitive fp32"] = quantized(cfg, cal)
    print("sensitivity scan kept:", cal.keep, flush=True)
    assert not report_seeds & set(calib_seen + cal.seeds), "calibration used report seeds"

    # optimize: precision and layout (compile optional: minutes of inductor on a CPU)
    rows["bf16"] = (optimize(copy.deepcopy(teacher), Optimize(dtype="bfloat16")), "bf16")
    rows["channels-last"] = (
        optimize(copy.deepcopy(teacher), Optimize(memory_format="channels_last")),
        "NHWC",
    )
    if args.compile:
        rows["compile"] = (optimize(copy.deepcopy(teacher), Optimize(compile="default")), "")

    results = {}
    base_x = None
    base_fdd = None
    for name, (den, how) in rows.items():
        t0 = time.time()
        with torch.inference_mode():
            x = generate(den).float()
        f = fdd(x)
        if base_x is None:
            base_x, base_fdd = x, f
        net = network_of(den)
        results[name] = {
            "how": how,
            "fdd": f,
            "ratio": f / base_fdd,
            "acc": class_accuracy(x, labels),
            "psnr": psnr(x, base_x) if name != "fp32 (uncompressed)" else float("inf"),
            "bytes": module_bytes(net),
        }
        print(f"{name}: FDD {f:.4f} ({f / base_fdd:.3f}x) [{time.time() - t0:.0f}s]", flush=True)

    tb = slice(0, args.timing_batch)
    tcond = spec.select(cond, tb)

    def timed(den):
        g = guided(den)

        def call():
            with torch.inference_mode():
                diffspeed.sample(g, noise[tb], args.solver, args.steps, cond=tcond)

        return call

    load_before = os.getloadavg()
    timing = round_robin(
        {name: timed(den) for name, (den, _) in rows.items()},
        baseline="fp32 (uncompressed)",
        device=torch.device("cpu"),
        rounds=args.rounds,
    )
    load_after = os.getloadavg()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Compression results: the embedded digits teacher on CPU",
        "",
        f"Measured {now} on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} cores, torch {torch.__version__}, `--threads {args.threads}`); "
        f"load average {load_before[0]:.2f} before timing, {load_after[0]:.2f} after.",
        "",
        f"Command: `python benchmarks/compress_cpu.py --threads {args.threads} --n {args.n} "
        f"--steps {args.steps} --qat-steps {args.qat_steps}`"
        + (" --compile" if args.compile else ""),
        "",
        f"Report set: reference seeds 0..{args.n - 1} (class-balanced), guidance "
        f"{RECOMMENDED_GUIDANCE}, {args.solver} {args.steps} steps for every row. FDD ratio: "
        "row FDD / fp32 FDD with the same sampler. PSNR: to the fp32 row's samples. "
        f"Calibration: {args.calib_samples} samples on calibration seeds "
        f"(10**12 + i, disjoint from the report set). QAT: {args.qat_steps} steps "
        f"({qat_s:.0f} s). Speed: median of {args.rounds} round-robin per-round ratios "
        f"to fp32, {args.timing_batch} images per timed call.",
        "",
        "| row | layers | FDD | FDD ratio | accuracy | PSNR (dB) | weights (KiB) | CPU speed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = timing[name]
        lines.append(
            f"| {name} | {r['how']} | {r['fdd']:.4f} | {r['ratio']:.3f} | {r['acc']:.3f} | "
            f"{r['psnr']:.1f} | {r['bytes'] / 1024:.0f} | {t.speedup:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()

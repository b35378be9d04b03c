"""Precision, compilation and quantization on full-size diffusers models (random weights), side
by side on one GPU.

The models are those of ``benchmarks/cache_gpu.py`` (configs written out, weights random:
latency does not depend on them): ``sd15``, the Stable Diffusion 1.5 ``UNet2DConditionModel``
at 64x64 latents, and ``dit-xl``, a DiT-XL/2 ``DiTTransformer2DModel`` at 32x32 latents. Each
setting is its own copy of the network, built with ``diffspeed.compress`` (``optimize`` for
dtype / compile, ``quantize`` with torchao for int8 / int4), and runs DDIM for ``--steps``
steps with classifier-free guidance. All settings are timed round-robin in one process
(``bench.timing.round_robin``: every round times each setting once in a shuffled order;
speedup = median of per-round ratios to ``fp16``, or to ``fp32`` on a CPU). A setting that
cannot run on this device is reported with its error instead of a number.

    python benchmarks/compress_gpu.py --model sd15
    python benchmarks/compress_gpu.py --model dit-xl --batch 4
    python benchmarks/compress_gpu.py --tiny --steps 4 --rounds 2 --compile-backend eager  # CPU
"""

from __future__ import annotations

import argparse
import platform
import traceback

import torch
from cache_gpu import DIT_XL, SD15_UNET, TINY, build

import diffspeed
from diffspeed.bench.timing import round_robin
from diffspeed.cache import FORA, DeepCache, apply_cache
from diffspeed.cache.calibrate import fidelity_psnr
from diffspeed.compress import Optimize, Quantize, optimize, quantize
from diffspeed.compress.quantize import module_bytes
from diffspeed.core.contract import network_of


def settings(model: str, backend: str, cuda: bool, group: int) -> dict[str, tuple]:
    """Setting name -> (weights dtype, steps): ``("opt", Optimize)``, ``("quant", Quantize)``,
    ``("cache",)``, applied in order to a fresh copy of the network built in that dtype."""
    half = torch.float16 if cuda else torch.float32
    bf16 = torch.bfloat16
    comp = ("opt", Optimize(compile="default", backend=backend))
    cache = "DeepCache" if model == "sd15" else "FORA"
    hn = "fp16" if cuda else "fp32"  # a CPU runs the half-precision rows' recipes in fp32
    return {
        "fp32": (torch.float32, []),
        "fp16": (torch.float16, []),
        "bf16": (bf16, []),
        f"{hn} + compile": (half, [comp]),
        "int8 weight-only (bf16)": (bf16, [("quant", Quantize(format="int8_weight"))]),
        "int8 weight-only (bf16) + compile": (
            bf16,
            [("quant", Quantize(format="int8_weight")), comp],
        ),
        f"int4 weight-only (bf16, g{group})": (
            bf16,
            [("quant", Quantize(format="int4_weight", backend="torchao", group_size=group))],
        ),
        "int8 dynamic (bf16) + compile": (
            bf16,
            [("quant", Quantize(format="int8_dynamic")), comp],
        ),
        f"{hn} + {cache} 3 + compile": (half, [("cache",), comp]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd15", choices=["sd15", "dit-xl"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="prompts / labels (CFG doubles it)")
    p.add_argument("--tiny", action="store_true", help="small model (CPU smoke test)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    cfg = TINY[args.model] if args.tiny else {"sd15": SD15_UNET, "dit-xl": DIT_XL}[args.model]
    noise = None
    cache = DeepCache(interval=3) if args.model == "sd15" else FORA(interval=3)

    calls, outs, sizes, failed = {}, {}, {}, {}
    group = 32 if args.tiny else 128
    for name, (dtype, recipe) in settings(args.model, args.compile_backend, cuda, group).items():
        try:
            g = torch.Generator().manual_seed(0)
            _, d, cond, shape, _ = build(args.model, cfg, args.batch, dev, dtype, g)
            if noise is None:
                noise = torch.randn(*shape, generator=g).to(dev)
            for step in recipe:
                if step[0] == "opt":
                    optimize(d, step[1])
                elif step[0] == "quant":
                    quantize(d, step[1])
                else:
                    apply_cache(d, cache)

            def call(d=d, name=name, cond=cond, noise=noise):
                with torch.inference_mode():
                    outs[name] = diffspeed.sample(d, noise, "ddim", args.steps, cond=cond)

            call()  # fails here, not in the timing, if the device cannot run it
            calls[name] = call
            sizes[name] = module_bytes(network_of(d))
        except Exception as e:  # a setting this device cannot run is reported, not fatal
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            traceback.print_exc()
    baseline = "fp16" if cuda and "fp16" in calls else "fp32"
    timing = round_robin(
        calls, baseline=baseline, device=dev, warmup=args.warmup, rounds=args.rounds
    )
    dev_name = torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu"
    print(
        f"{args.model}{' (tiny)' if args.tiny else ''}, random weights, {dev_name}, torch "
        f"{torch.__version__}, DDIM {args.steps} steps, CFG batch {2 * args.batch}; "
        f"round-robin, median of {args.rounds} per-round ratios to {baseline} after "
        f"{args.warmup} warm-up rounds (compile backend {args.compile_backend})"
    )
    print("| setting | latency s | speedup vs " + baseline + " | weights MB | PSNR vs fp32 |")
    print("|---|---|---|---|---|")
    ref = outs["fp32"].float()
    span = float(ref.max() - ref.min())
    for name, t in timing.items():
        ps = fidelity_psnr(outs[name].float(), ref, span) if name != "fp32" else float("inf")
        print(
            f"| {name} | {t.median_s:.3f} | {t.speedup:.2f}x | {sizes[name] / 2**20:.1f} | "
            f"{ps:.1f} |"
        )
    for name, why in failed.items():
        print(f"| {name} | - | not run: {why} | - | - |")


if __name__ == "__main__":
    main()

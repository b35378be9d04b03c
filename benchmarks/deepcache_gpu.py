"""DeepCache speedup on a Stable-Diffusion-1.5-sized UNet (random weights), side by side.

The SD 1.5 ``UNet2DConditionModel`` config is written out by hand (block_out_channels
320/640/1280/1280, cross-attention dim 768, 64x64 latents); weights are random because latency
does not depend on them. Classifier-free guidance batches cond + uncond (batch 2). Each setting
runs DDIM for ``--steps`` steps: 1 warm-up + median of ``--repeats`` timed runs (CUDA
synchronised), uncached and DeepCache (interval 3 and 5) in the same process. Prints the ratio
(the DeepCache paper reports 2.3x on SD 1.5) and the PSNR of the cached latents vs uncached.

    python benchmarks/deepcache_gpu.py                 # CUDA, fp16
    python benchmarks/deepcache_gpu.py --tiny --steps 6 --repeats 1   # CPU smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import diffspeed
from diffspeed.cache import DeepCache
from diffspeed.cache.calibrate import fidelity_psnr

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY = {**SD15_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64, 64)}
TINY.update(cross_attention_dim=32, norm_num_groups=16)
#: Stable Diffusion's scaled-linear betas (diffusers DDIMScheduler kwargs).
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--intervals", default="3,5")
    p.add_argument("--branch", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="small UNet (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    cfg = TINY if args.tiny else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval().requires_grad_(False).to(dev, dtype)
    den = diffspeed.from_diffusers(unet, DDIMScheduler(**SD_SCHEDULER))
    ctx = cfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 77, ctx, generator=g).to(dev, dtype)
    guided = diffspeed.guidance(den, 7.5, uncond={"encoder_hidden_states": torch.zeros_like(text)})
    size = cfg["sample_size"]
    noise = torch.randn(1, 4, size, size, generator=g).to(dev)

    def run() -> torch.Tensor:
        return diffspeed.sample(
            guided, noise, "ddim", args.steps, cond={"encoder_hidden_states": text}
        )

    def timed() -> tuple[float, torch.Tensor]:
        times = []
        for _ in range(args.repeats + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x = run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]), x

    base_t, base_x = timed()
    name = "tiny UNet" if args.tiny else "SD-1.5 UNet (random weights)"
    print(
        f"{name}, {dev} {str(dtype).removeprefix('torch.')}, DDIM {args.steps} steps, CFG batch 2"
    )
    print("| setting | latency s | speedup | PSNR vs uncached (latents) |")
    print("|---|---|---|---|")
    print(f"| uncached | {base_t:.3f} | 1.00x | inf |")
    for k in (int(v) for v in args.intervals.split(",")):
        with diffspeed.apply_cache(guided, DeepCache(interval=k, branch=args.branch)):
            t, x = timed()
        span = float(base_x.max() - base_x.min())
        ps = fidelity_psnr(x.float(), base_x.float(), span)
        print(
            f"| DeepCache interval {k}, branch {args.branch} | {t:.3f} | "
            f"{base_t / t:.2f}x | {ps:.1f} |"
        )


if __name__ == "__main__":
    main()

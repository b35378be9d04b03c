"""Cache speedups on full-size diffusers models (random weights) on a GPU, side by side.

Two models, configs written out by hand, weights random because latency does not depend on
them (skip decisions of the threshold caches would, so only the fixed-interval caches run):

* ``sd15``: the Stable Diffusion 1.5 ``UNet2DConditionModel`` (block_out_channels
  320/640/1280/1280, cross-attention dim 768, 64x64 latents), DeepCache at ``--intervals``
  (the DeepCache paper reports 2.3x on SD 1.5);
* ``dit-xl``: a DiT-XL/2 ``DiTTransformer2DModel`` (28 blocks, width 1152, 16 heads,
  patch 2, 32x32 latents = 256px), FORA and TaylorSeer (order 1) at ``--intervals``.

Classifier-free guidance batches cond + uncond (``--batch`` prompts -> 2x the batch). Each
setting runs DDIM for ``--steps`` steps, uncached and cached in the same process, round-robin
(each round times every setting once; ``--warmup`` untimed rounds first; median of
``--repeats`` rounds; CUDA synchronised). ``--compile`` wraps the network in
``torch.compile`` for every setting (the cache's data-dependent branch stays out of the
graph). Prints the speedup and the PSNR of the cached latents vs the uncached ones (random
weights: PSNR only shows the cache is active, not image quality).

    python benchmarks/cache_gpu.py --model sd15              # CUDA, fp16
    python benchmarks/cache_gpu.py --model dit-xl --batch 4
    python benchmarks/cache_gpu.py --tiny --steps 6 --repeats 1   # CPU smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import diffspeed
from diffspeed.bench.timing import synchronize
from diffspeed.cache import FORA, DeepCache, TaylorSeer
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
#: DiT-XL/2 at 256px (learned-sigma head dropped: out_channels 4, < 0.1 % of the FLOPs).
DIT_XL = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 28,
    "sample_size": 32,
    "patch_size": 2,
    "num_embeds_ada_norm": 1000,
}
TINY = {
    "sd15": {**SD15_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64, 64),
             "cross_attention_dim": 32, "norm_num_groups": 16},
    "dit-xl": {**DIT_XL, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 4,
               "sample_size": 8},
}  # fmt: skip
#: Stable Diffusion's scaled-linear betas (diffusers DDIMScheduler kwargs).
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def build(model: str, cfg: dict, batch: int, dev: torch.device, dtype: torch.dtype, gen):
    """``(network, guided denoiser, cond, latent shape, {cache name: interval -> config})``."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DConditionModel

    torch.manual_seed(0)
    size = cfg["sample_size"]
    if model == "sd15":
        net = UNet2DConditionModel(**cfg)
        ctx = cfg["cross_attention_dim"]
        text = torch.randn(batch, 77, ctx, generator=gen).to(dev, dtype)
        cond = {"encoder_hidden_states": text}
        uncond = {"encoder_hidden_states": torch.zeros_like(text)}
        caches = {"DeepCache": lambda k: DeepCache(interval=k)}
        sched = DDIMScheduler(**SD_SCHEDULER)
    else:
        net = DiTTransformer2DModel(**cfg)
        cond = {"class_labels": torch.arange(batch, device=dev) % 1000}
        uncond = {"class_labels": torch.full((batch,), 1000, device=dev)}
        caches = {
            "FORA": lambda k: FORA(interval=k),
            "TaylorSeer": lambda k: TaylorSeer(interval=k),
        }
        sched = DDIMScheduler(beta_schedule="linear")
    net = net.eval().requires_grad_(False).to(dev, dtype)
    den = diffspeed.guidance(diffspeed.from_diffusers(net, sched), 4.0, uncond=uncond)
    return net, den, cond, (batch, 4, size, size), caches


def timed(run: Callable[[], torch.Tensor], dev: torch.device) -> tuple[float, torch.Tensor]:
    """``(seconds, output)`` of one run (CUDA synchronised)."""
    synchronize(dev)
    t0 = time.perf_counter()
    x = run()
    synchronize(dev)
    return time.perf_counter() - t0, x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd15", choices=["sd15", "dit-xl"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--intervals", default="2,3,5")
    p.add_argument("--batch", type=int, default=1, help="prompts / labels (CFG doubles it)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--tiny", action="store_true", help="small model (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    cfg = TINY[args.model] if args.tiny else {"sd15": SD15_UNET, "dit-xl": DIT_XL}[args.model]
    g = torch.Generator().manual_seed(0)
    net, den, cond, shape, caches = build(args.model, cfg, args.batch, dev, dtype, g)
    if args.compile:
        torch._dynamo.config.recompile_limit = 64  # a graph variant per cache setting
        net.forward = torch.compile(net.forward)
    noise = torch.randn(*shape, generator=g).to(dev)
    settings = {"uncached": None} | {
        f"{cache} interval {k}": make(k)
        for cache, make in caches.items()
        for k in (int(v) for v in args.intervals.split(","))
    }

    def run() -> torch.Tensor:
        return diffspeed.sample(den, noise, "ddim", args.steps, cond=cond)

    # Eager: round-robin, every round times each setting once (install, run, remove), so clock
    # and thermal drift hit all alike. Compiled: one installation per setting (each one's
    # hooks are new code for dynamo, compiled in its warm-up rounds), its rounds in a row.
    rounds = range(args.warmup + args.repeats)
    if args.compile:
        order = [(r, name) for name in settings for r in rounds]
    else:
        order = [(r, name) for r in rounds for name in settings]
    times: dict[str, list[float]] = {name: [] for name in settings}
    outs: dict[str, torch.Tensor] = {}
    for r, name in order:
        if settings[name] is None:
            t, outs[name] = timed(run, dev)
        else:
            with diffspeed.apply_cache(den, settings[name]):
                t, outs[name] = timed(run, dev)
        if r >= args.warmup:
            times[name].append(t)

    name = f"{args.model}{' (tiny)' if args.tiny else ''}, random weights"
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"{name}, {dev_name} {str(dtype).removeprefix('torch.')}, DDIM {args.steps} steps, "
        f"CFG batch {2 * args.batch}{', torch.compile' if args.compile else ''}; "
        f"median of {args.repeats} {'rounds' if args.compile else 'round-robin rounds'} "
        f"after {args.warmup} warm-up rounds"
    )
    print("| setting | latency s | speedup | PSNR vs uncached (latents) |")
    print("|---|---|---|---|")
    base_t, base_x = statistics.median(times["uncached"]), outs["uncached"].float()
    span = float(base_x.max() - base_x.min())
    for name in settings:
        t = statistics.median(times[name])
        ps = fidelity_psnr(outs[name].float(), base_x, span)
        print(f"| {name} | {t:.3f} | {base_t / t:.2f}x | {ps:.1f} |", flush=True)


if __name__ == "__main__":
    main()

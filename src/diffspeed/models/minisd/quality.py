"""mini-sd's quality: generate through diffusers' pipeline, pool to 8x8, score with the digits
classifier (FDD, class accuracy against the prompt's digit) and a style statistic.

Samples are drawn with per-sample seeded latents (``seeded_noise``), so a sample does not
depend on its batch; prompts cycle through the digits (sample ``i`` asks for digit ``i % 10``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.models.minisd import data as msd

#: Latent shape ``(C, H, W)`` of mini-sd.
LATENT_SHAPE = (4, 8, 8)


def mini_sd_path() -> Path:
    """The shipped mini-sd folder (``StableDiffusionPipeline.from_pretrained`` loads it)."""
    return Path(__file__).resolve().parent.parent / "assets" / "mini-sd"


def load_pipeline(path: str | Path | None = None, scheduler: Any = None) -> Any:
    """mini-sd (or a pipeline folder) as a ``StableDiffusionPipeline``, safetensors only."""
    from diffusers import StableDiffusionPipeline

    from diffspeed.models.io import check_safetensors_folder

    folder = Path(path) if path is not None else mini_sd_path()
    check_safetensors_folder(folder)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, use_safetensors=True, local_files_only=True
    )
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PromptCache:
    """Prompt embeddings computed once per distinct prompt (condition caching): a sampler that
    asks for the same prompts again, at every step or in every batch, reuses them."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.table = pipe, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """``[len(prompts), L, D]`` encoder hidden states, as the pipeline computes them."""
        missing = sorted({p for p in prompts if p not in self.table})
        if missing:
            with torch.no_grad():
                emb, _ = self.pipe.encode_prompt(missing, "cpu", 1, False)
            self.table.update(zip(missing, emb, strict=True))
        return torch.stack([self.table[p] for p in prompts])


def mini_sd_denoiser(pipe: Any | None = None) -> Any:
    """mini-sd's UNet as a diffspeed denoiser on its ``[4, 8, 8]`` latents.

    Its conditioning spec takes ``encoder_hidden_states`` (batch dim 0); the unconditional
    input is the empty prompt's embeddings, and example conditions ask for digit ``i % 10``
    ("a handwritten <word>"), embedded once per prompt (:class:`PromptCache`).
    """
    from diffspeed.core.adapters import from_diffusers
    from diffspeed.core.contract import CondSpec

    pipe = pipe if pipe is not None else load_pipeline()
    cache = PromptCache(pipe)

    def examples(n: int) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": cache(prompts_for([i % 10 for i in range(n)]))}

    spec = CondSpec(
        keys=("encoder_hidden_states",),
        uncond={"encoder_hidden_states": cache([""])},
        sample_shape=LATENT_SHAPE,
        examples=examples,
    )
    den = from_diffusers(pipe.unet, pipe.scheduler, cond_spec=spec)
    den.prompts = cache
    return den


def prompts_for(digits: list[int], style: str = "regular") -> list[str]:
    """One caption per digit in the first template of ``style`` (a word, not a numeral)."""
    return [msd.caption(d, style, 0, numeral=False) for d in digits]


@dataclass(frozen=True)
class Samples:
    """Generated images ``[N, 3, 32, 32]`` in [-1, 1] with the digit each prompt asked for."""

    images: torch.Tensor
    digits: torch.Tensor


def generate(
    pipe: Any,
    seeds: range | list[int],
    *,
    steps: int,
    guidance: float,
    style: str = "regular",
    batch: int = 100,
) -> Samples:
    """Samples for ``seeds`` (digit ``seed % 10``) through the pipeline's own loop."""
    from diffspeed.solvers.noise import seeded_noise

    seeds = list(seeds)
    images = []
    for start in range(0, len(seeds), batch):
        part = seeds[start : start + batch]
        latents = seeded_noise(part, LATENT_SHAPE)
        out = pipe(
            prompts_for([s % 10 for s in part], style), num_inference_steps=steps,
            guidance_scale=guidance, latents=latents, output_type="pt", height=32, width=32,
        )  # fmt: skip
        images.append(out.images * 2 - 1)
    return Samples(torch.cat(images), torch.tensor([s % 10 for s in seeds]))


def reference(pipe: Any, seeds: range | list[int], *, guidance: float) -> Samples:
    """mini-sd's fidelity reference for ``seeds``: Heun, 100 Karras steps (199 UNet calls), through
    the pipeline's own loop with diffspeed's ``Scheduler``; the pipeline's scheduler is put back."""
    from diffspeed.integrations.diffusers import Scheduler

    own = pipe.scheduler
    pipe.scheduler = Scheduler.from_config(own.config, solver="heun", schedule="karras")
    try:
        return generate(pipe, seeds, steps=100, guidance=guidance)
    finally:
        pipe.scheduler = own


def score(samples: Samples) -> dict[str, float]:
    """FDD (pooled to 8x8, against the real digits), class accuracy, mean stroke mass."""
    from diffspeed.eval import metrics

    pooled = msd.pool_to_8x8(samples.images)
    return {
        "fdd": metrics.fdd(pooled),
        "accuracy": metrics.class_accuracy(pooled, samples.digits),
        "stroke_mass": float(msd.stroke_mass(samples.images).mean()),
    }


def real_floor(n: int = 1000, seed: int = 0) -> float:
    """FDD of ``n`` real digits taken through mini-sd's fixed maps (upsample x4, pool back),
    against the real digits: the floor a perfect mini-sd would read with ``n`` samples."""
    from diffspeed.eval import metrics
    from diffspeed.models.digits import load_digits

    x8, _ = load_digits("all")
    idx = torch.randperm(len(x8), generator=torch.Generator().manual_seed(seed))[:n]
    return metrics.fdd(msd.pool_to_8x8(msd.upsample(x8[idx])))

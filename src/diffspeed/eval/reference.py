"""The fixed reference set: seeds, conditions, noises and the high-accuracy sampler's outputs.

Computed once per (spec, model weights), cached on disk as safetensors under a name that
hashes both, and reused by every benchmark and by ``diffspeed bench``. Fidelity (PSNR / RMSE)
of an accelerated method is measured against these samples from the same noise and condition.
The conditions are the model's own example conditions (``cond_spec.example_cond(n)``: for the
embedded teacher, the digit classes in turn).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import network_of
from diffspeed.errors import ConfigError
from diffspeed.models.io import load_weights, read_metadata, save_weights, weights_digest

log = logging.getLogger("diffspeed")

#: Classifier-free guidance scale recommended for the embedded teacher (chosen on seeds
#: disjoint from the reference seeds; see the README's teacher-quality section).
RECOMMENDED_GUIDANCE = 1.25

#: Layout version of the cached reference files (part of their cache key).
REFERENCE_FORMAT = 2


@dataclass(frozen=True)
class ReferenceSpec:
    """What defines a reference set.

    Attributes:
        n: number of samples; sample ``i`` is drawn for the model's ``i``-th example condition
            (the embedded teacher's cycle through the classes, so a multiple of the class count
            is class-balanced).
        seed: base seed; sample ``i`` uses noise seed ``seed * 1_000_003 + i``.
        guidance: classifier-free guidance scale (applied when the model has an uncond).
        solver, steps, schedule: the high-accuracy sampler (Heun with 100 Karras steps,
            199 NFE).
    """

    n: int = 1000
    seed: int = 0
    guidance: float = RECOMMENDED_GUIDANCE
    solver: str = "heun"
    steps: int = 100
    schedule: str = "karras"

    def seeds(self) -> list[int]:
        """Per-sample noise seeds."""
        return [self.seed * 1_000_003 + i for i in range(self.n)]


@dataclass
class Reference:
    """A reference set: ``noise [n, C, H, W]``, ``cond`` (one condition per sample) and the
    reference sampler's ``samples [n, C, H, W]``; ``digest`` hashes the samples."""

    spec: ReferenceSpec
    noise: torch.Tensor
    cond: dict[str, torch.Tensor]
    samples: torch.Tensor
    digest: str


def default_cache_dir() -> Path:
    """``$DIFFSPEED_CACHE`` or ``~/.cache/diffspeed``."""
    return Path(os.environ.get("DIFFSPEED_CACHE", Path.home() / ".cache" / "diffspeed"))


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sorted(tensors.items()):
        h.update(k.encode())
        h.update(str((v.dtype, tuple(v.shape))).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def reference_sampler(denoiser: Any, scale: float) -> Any:
    """The denoiser a reference set samples: guided at ``scale`` when it has an uncond.

    An unconditional model (or one whose spec declares nothing) is sampled as it is; a
    conditional one without an uncond value only at ``scale == 1``.
    """
    from diffspeed.core.guidance import guidance

    spec = denoiser.cond_spec
    if spec.guidable:
        return guidance(denoiser, scale)
    if scale != 1.0 and spec.conditional:
        raise ConfigError(
            f"a reference set at guidance {scale} needs the model's unconditional input, which "
            "its conditioning spec does not give; set guidance = 1.0 or give the uncond "
            "(e.g. from_diffusers(..., uncond={...}))"
        )
    return denoiser


def reference_set(
    spec: ReferenceSpec = ReferenceSpec(),
    *,
    denoiser: Any = None,
    teacher_path: str | Path | None = None,
    sample_shape: tuple[int, ...] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 250,
    progress: bool = False,
) -> Reference:
    """Load the reference set of a model for ``spec`` from the cache, computing it the first time.

    Args:
        spec: samples, seeds, guidance and the reference sampler.
        denoiser: the (unguided) model; default: the embedded teacher (``teacher_path`` or the
            shipped weights).
        sample_shape: ``(C, H, W)`` when the model's spec does not say it.
        cache_dir: where reference files live (default :func:`default_cache_dir`); a model
            without weights (a plain function) is never cached.
        batch_size: samples per sampling call.
        progress: show a progress bar.
    """
    from diffspeed.progress import track
    from diffspeed.solvers import sample, seeded_noise

    if spec.n < 2:
        raise ConfigError("a reference set needs n >= 2 samples")
    if denoiser is None:
        from diffspeed.models.teacher import load_teacher

        denoiser = load_teacher(teacher_path)
    shape = sample_shape or denoiser.cond_spec.sample_shape
    if not shape:
        raise ConfigError(
            "the model does not say its sample shape; pass sample_shape=(C, H, W) (or give "
            "its CondSpec a sample_shape)"
        )
    shape = tuple(int(v) for v in shape)
    cond = {k: torch.as_tensor(v) for k, v in denoiser.cond_spec.example_cond(spec.n).items()}
    noise = seeded_noise(spec.seeds(), shape)
    weights = weights_digest(network_of(denoiser))
    path = None
    if weights is not None:
        key_src = repr((REFERENCE_FORMAT, asdict(spec), shape, weights, _tensors_digest(cond)))
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        path = Path(cache_dir or default_cache_dir()) / f"reference-{key}.safetensors"
        if path.is_file():
            t = load_weights(path)
            return Reference(spec, noise, cond, t["samples"], read_metadata(path)["digest"])
    log.info("computing reference set (n=%d, %s %d steps)", spec.n, spec.solver, spec.steps)
    den = reference_sampler(denoiser, spec.guidance)
    device = getattr(denoiser, "device", torch.device("cpu"))
    select = denoiser.cond_spec.select
    outs = []
    for i in track(range(0, spec.n, batch_size), "reference set", progress):
        sl = slice(i, i + batch_size)
        c = {k: v.to(device) for k, v in select(cond, sl).items()}
        x = sample(den, noise[sl].to(device), spec.solver, spec.steps, spec.schedule, cond=c)
        outs.append(x.float().cpu())
    samples = torch.cat(outs)
    digest = hashlib.sha256(samples.numpy().tobytes()).hexdigest()[:16]
    if path is not None:
        save_weights(path, {"samples": samples}, metadata={"digest": digest})
    return Reference(spec, noise, cond, samples, digest)

"""The fixed reference set: seeds, labels, noises and the high-accuracy sampler's outputs.

Computed once per (spec, teacher weights), cached on disk as safetensors under a name that
hashes both, and reused by every benchmark. Fidelity (PSNR / RMSE) of an accelerated method
is measured against these samples from the same noise and label.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from diffspeed.errors import ConfigError
from diffspeed.models.io import load_weights, read_metadata, save_weights

log = logging.getLogger("diffspeed")

#: Classifier-free guidance scale recommended for the embedded teacher (chosen on seeds
#: disjoint from the reference seeds; see the README's teacher-quality section).
RECOMMENDED_GUIDANCE = 1.25


@dataclass(frozen=True)
class ReferenceSpec:
    """What defines a reference set.

    Attributes:
        n: number of samples (labels cycle 0..9, so n divisible by 10 is class-balanced).
        seed: base seed; sample ``i`` uses noise seed ``seed * 1_000_003 + i``.
        guidance: classifier-free guidance scale.
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

    def labels(self) -> torch.Tensor:
        """Class-balanced labels ``[n]``."""
        return torch.arange(self.n) % 10


@dataclass
class Reference:
    """A reference set: ``noise [n,1,8,8]``, ``labels [n]``, ``samples [n,1,8,8]``."""

    spec: ReferenceSpec
    noise: torch.Tensor
    labels: torch.Tensor
    samples: torch.Tensor
    digest: str


def default_cache_dir() -> Path:
    """``$DIFFSPEED_CACHE`` or ``~/.cache/diffspeed``."""
    return Path(os.environ.get("DIFFSPEED_CACHE", Path.home() / ".cache" / "diffspeed"))


def _teacher_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def reference_set(
    spec: ReferenceSpec = ReferenceSpec(),
    *,
    teacher_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 250,
    progress: bool = False,
) -> Reference:
    """Load the reference set for ``spec`` from the cache, computing it the first time."""
    from diffspeed.models.teacher import ASSETS, guided_teacher, load_teacher
    from diffspeed.solvers import sample, seeded_noise

    if spec.n < 2:
        raise ConfigError("a reference set needs n >= 2 samples")
    tpath = Path(teacher_path) if teacher_path else ASSETS / "teacher.safetensors"
    key = hashlib.sha256(repr((asdict(spec), _teacher_digest(tpath))).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"reference-{key}.safetensors"
    if path.is_file():
        t = load_weights(path)
        return Reference(spec, t["noise"], t["labels"], t["samples"], read_metadata(path)["digest"])
    log.info("computing reference set %s (n=%d, %s %d steps)", key, spec.n, spec.solver, spec.steps)
    den = guided_teacher(spec.guidance, load_teacher(tpath))
    noise = seeded_noise(spec.seeds(), (1, 8, 8))
    labels = spec.labels()
    outs = []
    chunks = range(0, spec.n, batch_size)
    if progress:
        from rich.progress import track

        chunks = track(chunks, description="reference set")
    for i in chunks:
        sl = slice(i, i + batch_size)
        outs.append(
            sample(
                den,
                noise[sl],
                spec.solver,
                spec.steps,
                spec.schedule,
                cond={"class_labels": labels[sl]},
            )
        )
    samples = torch.cat(outs)
    digest = hashlib.sha256(samples.numpy().tobytes()).hexdigest()[:16]
    tensors = {"noise": noise, "labels": labels, "samples": samples}
    save_weights(path, tensors, metadata={"digest": digest})
    return Reference(spec, noise, labels, samples, digest)

"""Injected randomness with per-sample seeds, so a sample never depends on the batch size."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffspeed.errors import ConfigError, ShapeError


def seeded_noise(
    seeds: Sequence[int] | torch.Tensor,
    shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit Gaussian noise ``[len(seeds), *shape]``; row ``i`` depends only on ``seeds[i]``."""
    try:
        shape = tuple(int(v) for v in shape)
        seeds = torch.as_tensor(seeds)
    except (TypeError, ValueError, RuntimeError):
        raise ShapeError(
            f"seeded_noise needs integer seeds and a sample shape such as (1, 8, 8), got "
            f"shape {shape!r}; pass the model's den.cond_spec.sample_shape"
        ) from None
    if seeds.is_floating_point() or seeds.ndim > 1 or (seeds.numel() and int(seeds.min()) < 0):
        raise ConfigError("seeded_noise needs a flat list of integer seeds >= 0, e.g. range(8)")
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)))
        for s in seeds.tolist()
    ]
    if not rows:
        raise ShapeError("seeded_noise needs at least one seed, e.g. range(8)")
    return torch.stack(rows).to(device=device, dtype=dtype)


class NoiseSampler:
    """Fresh Gaussian noise per call, one generator per sample (SDE solvers draw from it).

    Args:
        seeds: one seed per sample; row ``i`` of every draw depends only on ``seeds[i]`` and on
            how many draws came before, never on the batch it is in.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor) -> None:
        self.gens = [
            torch.Generator().manual_seed(int(s) + 0x5EED) for s in torch.as_tensor(seeds).tolist()
        ]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``like`` (its batch must match the number of seeds)."""
        if like.shape[0] != len(self.gens):
            raise ShapeError(f"noise for batch {like.shape[0]} but {len(self.gens)} seeds")
        rows = [torch.randn(tuple(like.shape[1:]), generator=g) for g in self.gens]
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)


def as_noise_sampler(generator: object, batch: int) -> NoiseSampler | None:
    """Turn what a user passed as ``generator`` into a noise source (or None).

    Accepts a :class:`NoiseSampler`, a sequence of per-sample seeds, a ``torch.Generator``
    (its first draw seeds one generator per sample) or ``None`` (no randomness available).
    """
    if generator is None or isinstance(generator, NoiseSampler):
        return generator
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
        return NoiseSampler(seeds)
    if isinstance(generator, Sequence | torch.Tensor):
        seeds = torch.as_tensor(generator).flatten()
        if seeds.numel() != batch:
            raise ShapeError(f"{seeds.numel()} seeds for a batch of {batch}")
        return NoiseSampler(seeds)
    raise ConfigError(
        "generator must be a torch.Generator, a NoiseSampler, a list of per-sample seeds or None"
    )

"""Teacher probability-flow trajectories on a consistency grid, for anchoring a consistency model.

A consistency function is defined by ``f(x_t, t) = x_0`` along every PF-ODE trajectory. The
consistency losses (CD, LCM) only ask neighbouring grid points to agree with a bootstrapped
target, so the error of each hop accumulates down the chain of ``T / k`` hops and sets a floor
under one-step sampling. With a cached set of teacher trajectories the definition itself can
be imposed on those noises: the state of trajectory ``i`` at grid sigma ``s_j`` must map to the
trajectory's end. :class:`~diffspeed.distill.lcm.LCMLoss` adds that term with ``anchor > 0``.

The trajectories run the classifier-free-guided teacher with DPM-Solver++(2M) on the grid,
each grid interval split into ``substeps`` geometric steps, so the states land exactly on
the grid's sigmas; the guidance scale is drawn per trajectory from the LCM's range.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import network_of
from diffspeed.errors import ConfigError

log = logging.getLogger("diffspeed")


@dataclass(frozen=True)
class Trajectories:
    """Teacher ODE trajectories sampled at the grid's sigmas.

    Attributes:
        sigmas: the grid ``[G]``, increasing (as :func:`~diffspeed.distill.consistency.
            timestep_grid` returns it), float64.
        states: ``[N, G, *shape]``: trajectory ``i`` at ``sigmas[j]`` (``j = G - 1`` is the
            start: the scaled noise the one-step sampler sees).
        endpoints: ``[N, *shape]``: where each trajectory ends (sigma 0).
        cond: the teacher's conditioning of each trajectory (the spec's example conditions,
            ``[N, ...]``).
        guidance: ``[N]`` the guidance scale of each trajectory (float64).
    """

    sigmas: torch.Tensor
    states: torch.Tensor
    endpoints: torch.Tensor
    cond: dict[str, torch.Tensor]
    guidance: torch.Tensor

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, device: str | torch.device) -> Trajectories:
        """The same trajectories on ``device``."""
        cond = {k: v.to(device) for k, v in self.cond.items()}
        return Trajectories(
            self.sigmas.to(device),
            self.states.to(device),
            self.endpoints.to(device),
            cond,
            self.guidance.to(device),
        )


def _refined(grid: torch.Tensor, substeps: int) -> torch.Tensor:
    """The decreasing grid with each interval split into ``substeps`` geometric steps, then 0."""
    desc = grid.flip(0)
    points = [desc[:1]]
    for a, b in zip(desc[:-1], desc[1:], strict=True):
        j = torch.arange(1, substeps + 1, dtype=torch.float64)
        points.append(a * (b / a) ** (j / substeps))
    return torch.cat([*points, torch.zeros(1, dtype=torch.float64)])


def teacher_trajectories(
    teacher: Any,
    grid: torch.Tensor,
    *,
    num: int,
    w_range: tuple[float, float],
    seed: int = 1,
    substeps: int = 2,
    batch_size: int = 250,
    cache: str | Path | None = None,
    progress: bool = False,
) -> Trajectories:
    """Sample ``num`` guided teacher trajectories through ``grid``; cached at ``cache``.

    Args:
        teacher: the unguided conditional teacher denoiser; its conditioning spec gives the
            sample shape, the conditions (its example conditions) and the unconditional input.
        grid: increasing sigmas (e.g. ``timestep_grid(student, k, strength)``).
        num: how many trajectories; noise seeds are ``seed * 1_000_003 + i`` (seed 1: disjoint
            from the reference set's seeds 0..999).
        w_range: the guidance scale of trajectory ``i`` is drawn uniformly from it.
        substeps: DPM-Solver++(2M) steps per grid interval (2: within 0.007 RMS of the
            teacher's Heun-100 samples on the embedded model).
        cache: a safetensors file; reused when it was made with the same settings and teacher
            (a torch module, fingerprinted by its weights), recomputed otherwise.
    """
    from diffspeed.core.guidance import guidance as cfg
    from diffspeed.distill.students import sample_shape
    from diffspeed.models.io import cached_tensors, weights_digest
    from diffspeed.progress import track
    from diffspeed.solvers import sample, seeded_noise

    if num < 1 or substeps < 1 or not 0 <= w_range[0] <= w_range[1]:
        raise ConfigError(
            f"trajectories need num >= 1, substeps >= 1 and 0 <= w_min <= w_max, got "
            f"{num}, {substeps}, {w_range}"
        )
    spec = teacher.cond_spec
    shape = sample_shape(spec)
    grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
    settings = (grid.tolist(), num, tuple(w_range), seed, substeps, shape, spec.keys)
    # a teacher that is not a torch module cannot be fingerprinted: its cache is never reused
    digest = weights_digest(network_of(teacher))
    key = hashlib.sha256(repr((settings, digest)).encode()).hexdigest()[:16]

    def compute() -> dict[str, torch.Tensor]:
        seeds = [seed * 1_000_003 + i for i in range(num)]
        noise = seeded_noise(seeds, tuple(shape))
        cond = spec.example_cond(num)
        lo, hi = w_range
        u = torch.rand(num, generator=torch.Generator().manual_seed(seed)).double()
        w = lo + (hi - lo) * u
        sigmas = _refined(grid, substeps)
        n_grid = len(grid)
        states = torch.empty(num, n_grid, *noise.shape[1:])
        endpoints = torch.empty_like(noise)
        chunks = track(range(0, num, batch_size), "teacher trajectories", progress)
        for start in chunks:
            rows = slice(start, start + batch_size)
            den = cfg(teacher, w[rows].to(teacher.device))
            part = states[rows]
            part[:, n_grid - 1] = noise[rows] * teacher.noise_scale(float(grid[-1]))

            def keep(info: dict[str, Any], part: torch.Tensor = part) -> None:
                i = info["i"] + 1  # steps taken
                if i % substeps == 0 and i // substeps < n_grid:
                    part[:, n_grid - 1 - i // substeps] = info["x"].float().cpu()

            endpoints[rows] = sample(
                den,
                noise[rows].to(teacher.device),
                "dpmpp_2m",
                schedule=sigmas,
                cond={k: v.to(teacher.device) for k, v in spec.select(cond, rows).items()},
                callback=keep,
            ).cpu()
        out = {"states": states, "endpoints": endpoints, "guidance": w}
        return {**out, **{f"cond.{k}": v for k, v in cond.items()}}

    t = cached_tensors(cache, key if digest is not None else None, compute)
    cond = {k[len("cond.") :]: v for k, v in t.items() if k.startswith("cond.")}
    return Trajectories(grid, t["states"], t["endpoints"], cond, t["guidance"])

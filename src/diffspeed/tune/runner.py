"""Run a :class:`~diffspeed.tune.config.Candidate` on a denoiser: the one place a tuned
configuration turns into samples (used by the search, ``diffspeed sample`` and the bench)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from diffspeed.errors import ConfigError
from diffspeed.tune.config import Candidate


@dataclass
class RunStats:
    """What one run cost: network calls (``nfe``), full (uncached) calls, and the network."""

    nfe: int
    full: int
    network: str


class Runner:
    """Samples candidates on one model; guided denoisers and students are built once.

    Args:
        denoiser: the unguided model (``D(x, sigma, **cond)``, with its ``cond_spec``).
        device: where the model lives (noise and conditions are moved there).
    """

    def __init__(self, denoiser: Any, device: torch.device | str | None = None) -> None:
        self.denoiser = denoiser
        self.device = torch.device(device or getattr(denoiser, "device", "cpu"))
        self._guided: dict[float, Any] = {}
        self._students: dict[str, Any] = {}

    def guided(self, scale: float) -> Any:
        """The model with classifier-free guidance ``scale`` (itself when not applicable)."""
        from diffspeed.core.guidance import guidance

        spec = self.denoiser.cond_spec
        if scale == 1.0 or not spec.conditional:
            return self.denoiser
        if not spec.guidable:
            raise ConfigError(
                f"guidance {scale} needs the model's unconditional input, which it does not "
                "declare; tune at guidance 1.0 or give the uncond (from_diffusers(uncond=...))"
            )
        if scale not in self._guided:
            self._guided[scale] = guidance(self.denoiser, scale)
        return self._guided[scale]

    def student(self, name: str) -> Any:
        """A loaded student ``(denoiser, recipe)``."""
        from diffspeed.distill.students import load_student

        if name not in self._students:
            self._students[name] = load_student(name, device=self.device)
        return self._students[name]

    def run(
        self,
        cand: Candidate,
        noise: torch.Tensor,
        cond: Mapping[str, Any] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, RunStats]:
        """Sample ``noise [B, C, H, W]`` (unit Gaussian) for ``cond`` with ``cand``."""
        from diffspeed.core.contract import cond_to
        from diffspeed.solvers import sample
        from diffspeed.tune.space import EXTENSIONS

        cond = cond_to(cond or {}, self.device)
        noise = noise.to(self.device)
        with ExitStack() as stack:
            for name, cfg in cand.extensions.items():
                stack.enter_context(EXTENSIONS[name].install(self.denoiser, cfg))
            if cand.student:
                from diffspeed.distill.students import sample_student

                student = self.student(cand.student)
                scale = cand.guidance if student[1].w_conditioned else None
                x, info = sample_student(student, noise, cond, guidance=scale, return_info=True)
                nfe = int(info["nfe"])
                return x, RunStats(nfe, nfe, f"student:{cand.student}")
            handle = None
            if cand.cache:
                from diffspeed.cache import apply_cache, config_from_dict

                handle = stack.enter_context(
                    apply_cache(self.denoiser, config_from_dict(dict(cand.cache)))
                )
            schedule: Any = cand.schedule
            if cand.sigmas is not None:
                schedule = torch.tensor(cand.sigmas, dtype=torch.float64)
            elif cand.schedule in ("ays", "dp"):
                raise ConfigError(f"candidate {cand.label!r}: a tuned schedule needs 'sigmas'")
            options = dict(cand.options)
            if cand.time_shift:
                options["time_shift"] = cand.time_shift
            x, info = sample(
                self.guided(cand.guidance),
                noise,
                cand.solver,
                cand.steps,
                schedule,
                cond=cond,
                generator=list(seeds) if seeds is not None else None,
                return_info=True,
                **options,
            )
            nfe = int(info["nfe"])
            full = nfe
            if handle is not None:
                full = min(nfe, int(handle.stats.get("full", nfe)))
            return x, RunStats(nfe, full, "teacher")

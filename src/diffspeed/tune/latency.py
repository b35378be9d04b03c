"""The tuner's latency estimate: NFE x per-call cost, caches' cheap calls counted as such.

Timing every candidate would cost more than scoring it, so candidates are ranked by a model
calibrated with a few real timings at the timing batch (median of ``repeats`` runs each):

* per network (the guided model, each student): runs of DDIM with ``k1`` and ``k2`` calls
  give a per-call cost ``(t2 - t1) / (k2 - k1)`` and a fixed overhead (noise scaling, the
  solver's own arithmetic);
* per cache config: one cached run of ``k2`` calls, with the cache's count of full calls, gives
  the cost of a cached call as a fraction of a full one.

``estimate(candidate, nfe, full)`` is then ``overhead + full * c + (nfe - full) * c * f``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffspeed.tune.config import Candidate


@dataclass
class LatencyModel:
    """Per-network call costs (seconds per call at the timing batch) and cache fractions."""

    per_call: dict[str, float] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    cached_fraction: dict[str, float] = field(default_factory=dict)
    timings: int = 0
    seconds: float = 0.0

    def estimate(self, network: str, nfe: int, full: int, cache: dict[str, Any] | None) -> float:
        """Seconds per timing batch of a run with ``nfe`` calls, ``full`` of them uncached."""
        c = self.per_call[network]
        f = self.cached_fraction.get(_cache_key(cache), 1.0) if cache else 1.0
        return self.overhead.get(network, 0.0) + full * c + (nfe - full) * c * f

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (milliseconds)."""
        return {
            "per_call_ms": {k: 1e3 * v for k, v in self.per_call.items()},
            "overhead_ms": {k: 1e3 * v for k, v in self.overhead.items()},
            "cached_call_fraction": dict(self.cached_fraction),
            "timed_runs": self.timings,
            "seconds": self.seconds,
        }


def _cache_key(cache: dict[str, Any] | None) -> str:
    return json.dumps(cache, sort_keys=True)


class LatencyCalibrator:
    """Fills a :class:`LatencyModel` lazily, timing each network and cache once.

    Args:
        runner: the :class:`~diffspeed.tune.runner.Runner` of the model.
        noise, cond: one timing batch (unit noise and its conditions).
        guidance: the scale candidates run at.
        repeats: timed runs per measurement (median).
    """

    def __init__(self, runner: Any, noise: torch.Tensor, cond: dict, guidance: float,
                 repeats: int = 3, k1: int = 2, k2: int = 8) -> None:  # fmt: skip
        self.runner, self.noise, self.cond = runner, noise, cond
        self.guidance, self.repeats, self.k1, self.k2 = guidance, repeats, k1, k2
        self.model = LatencyModel()

    def _time(self, cand: Candidate) -> tuple[float, Any]:
        t0 = time.perf_counter()
        runs, stats = [], None
        self.runner.run(cand, self.noise, self.cond, seeds=[0] * len(self.noise))  # warm-up
        for _ in range(self.repeats):
            s = time.perf_counter()
            _, stats = self.runner.run(cand, self.noise, self.cond, seeds=[0] * len(self.noise))
            runs.append(time.perf_counter() - s)
        self.model.timings += self.repeats + 1
        self.model.seconds += time.perf_counter() - t0
        return statistics.median(runs), stats

    def _network(self, cand: Candidate) -> str:
        if cand.student:
            from diffspeed.core.contract import network_of

            # students of one architecture share a cost per call (timed on the first one)
            net = network_of(self.runner.student(cand.student)[0])
            size = sum(p.numel() for p in net.parameters())
            key = f"student:{type(net).__name__}:{size}"
            if key not in self.model.per_call:
                t, stats = self._time(cand)  # a student runs its fixed recipe: cost per call
                self.model.per_call[key] = t / max(stats.nfe, 1)
                self.model.overhead[key] = 0.0
            return key
        key = "teacher"
        if key not in self.model.per_call:
            base = Candidate("ddim", self.k1, "trailing", guidance=self.guidance)
            t1, _ = self._time(base)
            t2, _ = self._time(Candidate("ddim", self.k2, "trailing", guidance=self.guidance))
            c = max((t2 - t1) / (self.k2 - self.k1), 1e-9)
            self.model.per_call[key] = c
            self.model.overhead[key] = max(t1 - self.k1 * c, 0.0)
        return key

    def estimate(self, cand: Candidate, nfe: int, full: int) -> float:
        """Estimated seconds per timing batch of ``cand`` (timing what is not calibrated yet)."""
        network = self._network(cand)
        if cand.cache and _cache_key(cand.cache) not in self.model.cached_fraction:
            probe = Candidate("ddim", self.k2, "trailing", guidance=self.guidance,
                              cache=dict(cand.cache))  # fmt: skip
            t, stats = self._time(probe)
            c, o = self.model.per_call[network], self.model.overhead[network]
            cached = stats.nfe - stats.full
            frac = (t - o - stats.full * c) / (cached * c) if cached else 1.0
            self.model.cached_fraction[_cache_key(cand.cache)] = min(max(frac, 0.0), 1.0)
        return self.model.estimate(network, nfe, full, cand.cache)

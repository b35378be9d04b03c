"""Timing done right: warm-up, round-robin rounds against the baseline, device
synchronisation, peak memory.

Latency is wall time (``time.perf_counter``) of a whole generation call, synchronised on CUDA
before the clock starts and before it stops. Peak memory is ``torch.cuda.max_memory_allocated``
on CUDA and, on CPU, the peak resident set size above the level at the start, polled from
``/proc/self/statm`` by a background thread every millisecond (Linux; elsewhere the process's
lifetime ``ru_maxrss`` is reported instead and marked as such).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_STATM = Path("/proc/self/statm")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class RoundRobinTiming:
    """One call's result of :func:`round_robin` (seconds; ratios are baseline / this call)."""

    median_s: float
    runs_s: tuple[float, ...]
    ratios: tuple[float, ...]
    speedup: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "median_s": self.median_s,
            "runs_s": list(self.runs_s),
            "ratios": list(self.ratios),
            "speedup_min": min(self.ratios),
            "speedup_max": max(self.ratios),
        }


def round_robin(
    calls: dict[str, Callable[[], Any]],
    *,
    baseline: str,
    device: torch.device,
    warmup: int = 1,
    rounds: int = 5,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    self_timed: bool = False,
) -> dict[str, RoundRobinTiming]:
    """Time every call once per round, in an order shuffled per round, the baseline included.

    A call's speedup is the median over rounds of ``baseline time / its time`` measured in
    the same round, so load that drifts between rounds cancels out of the ratios (rows timed
    one after another would each see a different machine). With ``self_timed`` each call
    returns the seconds of its own timed part (its set-up, e.g. installing a cache, stays off
    the clock) and ``clock`` is not used.
    """
    import random

    if baseline not in calls:
        raise KeyError(f"baseline {baseline!r} is not among the timed calls")
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    order = list(calls)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            if self_timed:
                times[name].append(float(calls[name]()))
                continue
            synchronize(device)
            t0 = clock()
            calls[name]()
            synchronize(device)
            times[name].append(clock() - t0)
    base = times[baseline]
    out = {}
    for name, runs in times.items():
        ratios = tuple(b / t for b, t in zip(base, runs, strict=True))
        out[name] = RoundRobinTiming(
            statistics.median(runs), tuple(runs), ratios, statistics.median(ratios)
        )
    return out


def _rss_bytes() -> int:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager measuring peak memory (bytes) of the code inside it.

    ``.peak_bytes`` after exit; ``.kind`` says what was measured ("cuda_allocated",
    "rss_delta" or "max_rss_lifetime").
    """

    def __init__(self, device: torch.device, interval_s: float = 0.001) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self.kind = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self, start: int) -> None:
        peak = start
        while not self._stop.is_set():
            peak = max(peak, _rss_bytes())
            self._stop.wait(self.interval_s)
        self.peak_bytes = max(peak, _rss_bytes()) - start

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self.kind = "cuda_allocated"
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _STATM.is_file():
            self.kind = "rss_delta"
            self._thread = threading.Thread(target=self._poll, args=(_rss_bytes(),), daemon=True)
            self._thread.start()
        else:
            self.kind = "max_rss_lifetime"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_allocated":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

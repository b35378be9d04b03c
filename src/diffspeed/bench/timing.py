"""Timing done right: warm-up, median of repeats, device synchronisation, peak memory.

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
class Timing:
    """Result of :func:`time_call`: the median and every repeat, in seconds."""

    median_s: float
    runs_s: tuple[float, ...]
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"median_s": self.median_s, "runs_s": list(self.runs_s), "warmup": self.warmup}


def time_call(
    fn: Callable[[], Any], *, device: torch.device, warmup: int = 1, repeats: int = 5
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    runs = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), tuple(runs), warmup)


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

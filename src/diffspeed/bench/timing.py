"""Timing done right: warm-up, round-robin rounds against the baseline, device
synchronisation, peak memory.

Latency is wall time (``time.perf_counter``) of a whole generation call, synchronised on CUDA
before the clock starts and before it stops; the process's CPU time (``time.process_time``, all
its threads) is recorded next to it. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA
and, on Linux CPUs, the resident-set high-water mark above the level at the start, after the C
heap's free pages are handed back to the OS (see :data:`PEAK_MEMORY_METHODS`; elsewhere a
polled resident set or the process's lifetime ``ru_maxrss``, marked as such).
"""

from __future__ import annotations

import math
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
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class RoundRobinTiming:
    """One call's result of :func:`round_robin` (seconds; ratios are baseline / this call,
    taken within each round).

    Attributes:
        median_s: median wall time of one call over the rounds.
        runs_s: wall time of each round's call.
        ratios: per round, the baseline's wall time / this call's.
        speedup: median of ``ratios``.
        cpu_runs_s: process CPU time (every thread) of each round's call.
        cpu_ratios: per round, the baseline's CPU time / this call's.
        cpu_speedup: median of ``cpu_ratios``.
    """

    median_s: float
    runs_s: tuple[float, ...]
    ratios: tuple[float, ...]
    speedup: float
    cpu_runs_s: tuple[float, ...] = ()
    cpu_ratios: tuple[float, ...] = ()
    cpu_speedup: float | None = None

    @property
    def spread(self) -> float:
        """Relative spread of the per-round wall ratios (see :func:`spread`)."""
        return spread(self.ratios)

    @property
    def cpu_spread(self) -> float | None:
        """Relative spread of the per-round CPU-time ratios (None without CPU times)."""
        return spread(self.cpu_ratios) if self.cpu_ratios else None

    @property
    def cpu_median_s(self) -> float | None:
        """Median CPU time of one call (None without CPU times)."""
        return statistics.median(self.cpu_runs_s) if self.cpu_runs_s else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "median_s": self.median_s,
            "runs_s": list(self.runs_s),
            "ratios": list(self.ratios),
            "speedup_min": min(self.ratios),
            "speedup_max": max(self.ratios),
            "spread": self.spread,
            "cpu_median_s": self.cpu_median_s,
            "cpu_runs_s": list(self.cpu_runs_s),
            "cpu_ratios": list(self.cpu_ratios),
            "cpu_speedup": self.cpu_speedup,
            "cpu_spread": self.cpu_spread,
        }


def spread(ratios: tuple[float, ...] | list[float]) -> float:
    """Half the interquartile range of per-round ratios over their median (0.1: the middle
    half of the rounds lies within about +-10 % of the reported speedup); 0 for one round."""
    if len(ratios) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return (q3 - q1) / (2 * statistics.median(ratios))


def _wall_of(got: Any) -> float:
    """The wall seconds a self-timed call returned (``seconds`` or ``(wall, cpu)``)."""
    return float(got[0] if isinstance(got, tuple) else got)


def _ratios(base: list[float], runs: list[float]) -> tuple[float, ...]:
    return tuple(b / t if t > 0 else math.inf for b, t in zip(base, runs, strict=True))


def round_robin(
    calls: dict[str, Callable[[], Any]],
    *,
    baseline: str,
    device: torch.device,
    warmup: int = 1,
    rounds: int = 5,
    max_rounds: int | None = None,
    spread_limit: float = 0.1,
    min_call_s: float = 0.0,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
    self_timed: bool = False,
) -> dict[str, RoundRobinTiming]:
    """Time every call once per round, in an order shuffled per round, the baseline included.

    A call's speedup is the median over rounds of ``baseline time / its time`` measured in
    the same round, so load that drifts between rounds cancels out of the ratios (rows timed
    one after another would each see a different machine). Wall time (``clock``) and process
    CPU time (``cpu_clock``, every thread of this process) are both recorded; CPU time leaves
    out the time other processes hold the cores, so its ratios hold up better on a busy machine.

    After ``rounds`` rounds, more are run (up to ``max_rounds``) while some call's per-round
    wall ratios spread more than ``spread_limit`` (see :func:`spread`). A call whose last
    warm-up took less than ``min_call_s`` is repeated within each timed measurement until the
    measurement lasts about that long (times are per call), so that a short call is not at the
    mercy of one scheduler time slice. With ``self_timed`` each call returns the seconds of
    its own timed part, or ``(wall, cpu)`` seconds (its set-up, e.g. installing a cache, stays
    off the clock) and the clocks are not used.
    """
    import random

    if baseline not in calls:
        raise KeyError(f"baseline {baseline!r} is not among the timed calls")
    reps = dict.fromkeys(calls, 1)
    for name, fn in calls.items():
        for _ in range(warmup):
            t0 = clock()
            got = fn()
            took = _wall_of(got) if self_timed else clock() - t0
        if warmup and min_call_s > 0 and took > 0:
            reps[name] = max(1, math.ceil(min_call_s / took))
    order = list(calls)
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    limit = max(rounds, max_rounds or rounds)
    done = 0
    while done < limit:
        if done >= rounds:
            base = wall[baseline]
            if max(spread(_ratios(base, runs)) for runs in wall.values()) <= spread_limit:
                break
        rng.shuffle(order)
        for name in order:
            n = reps[name]
            if self_timed:
                got = [calls[name]() for _ in range(n)]
                wall[name].append(sum(_wall_of(g) for g in got) / n)
                if all(isinstance(g, tuple) for g in got):
                    cpu[name].append(sum(float(g[1]) for g in got) / n)
                continue
            synchronize(device)
            t0, c0 = clock(), cpu_clock()
            for _ in range(n):
                calls[name]()
            synchronize(device)
            wall[name].append((clock() - t0) / n)
            cpu[name].append((cpu_clock() - c0) / n)
        done += 1
    out = {}
    for name, runs in wall.items():
        ratios = _ratios(wall[baseline], runs)
        has_cpu = len(cpu[name]) == len(runs) and len(cpu[baseline]) == len(runs)
        cpu_ratios = _ratios(cpu[baseline], cpu[name]) if has_cpu else ()
        out[name] = RoundRobinTiming(
            median_s=statistics.median(runs),
            runs_s=tuple(runs),
            ratios=ratios,
            speedup=statistics.median(ratios),
            cpu_runs_s=tuple(cpu[name]) if has_cpu else (),
            cpu_ratios=cpu_ratios,
            cpu_speedup=statistics.median(cpu_ratios) if cpu_ratios else None,
        )
    return out


def _rss_bytes() -> int:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_bytes(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{_STATUS} has no {key}")


def _reset_hwm() -> bool:
    """Reset this process's resident-set high-water mark (``VmHWM``); False where the kernel
    does not allow it."""
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``), so that memory the
    next call allocates shows up in the resident set instead of reusing freed pages."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


#: What :class:`PeakMemory` measured, by its ``kind`` (for reports).
PEAK_MEMORY_METHODS = {
    "cuda_allocated": "torch.cuda.max_memory_allocated during the call (reset before it)",
    "rss_hwm": "peak resident set during the call above the level before it: the C heap's free "
    "pages are handed back to the OS first (malloc_trim), then the kernel's high-water mark "
    "(VmHWM) is reset and read after the call",
    "rss_poll": "peak resident set above the level at the start, polled every millisecond",
    "max_rss_lifetime": "the process's lifetime peak resident set (ru_maxrss)",
}


class PeakMemory:
    """Context manager measuring peak memory (bytes) of the code inside it.

    ``.peak_bytes`` after exit; ``.kind`` says what was measured (a key of
    :data:`PEAK_MEMORY_METHODS`). On Linux CPU runs the kernel's resident-set high-water mark
    is reset at the start after the C heap is trimmed, so memory freed by earlier calls and
    reused by this one still counts (a plain resident-set delta reads ~0 for it).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.001) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self.kind = ""
        self._start = 0
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
        elif _STATUS.is_file() and _reset_hwm():
            self.kind = "rss_hwm"
            _trim_heap()
            self._start = _status_bytes("VmRSS")
            _reset_hwm()
        elif _STATM.is_file():
            self.kind = "rss_poll"
            self._thread = threading.Thread(target=self._poll, args=(_rss_bytes(),), daemon=True)
            self._thread.start()
        else:
            self.kind = "max_rss_lifetime"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_allocated":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "rss_hwm":
            self.peak_bytes = max(0, _status_bytes("VmHWM") - self._start)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


#: A row's per-round ratios spreading more than this (see :func:`spread`) mark the run busy.
SPREAD_LIMIT = 0.1
#: Timed measurements shorter than this repeat the call (see :func:`round_robin`).
MIN_CALL_S = 0.1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@dataclass(frozen=True)
class LoadCheck:
    """Whether the machine was busy while rows were timed, and what the speedups come from.

    The machine counts as busy when the 1-minute load average (this run's own threads
    included) exceeds the core count at the start or end of timing, i.e. other processes
    wanted more cores than this run left free, or when some row's per-round ratios spread
    more than ``spread_limit``. On a busy CPU run the speedups are taken from process CPU
    time, which leaves out the time other processes hold the cores (``basis == "cpu"``).
    """

    load_start: float | None
    load_end: float | None
    cpu_count: int
    threads: int
    max_spread: float
    spread_limit: float
    busy: bool
    basis: str

    @classmethod
    def of(
        cls,
        timed: dict[str, RoundRobinTiming],
        *,
        loads: tuple[float | None, float | None],
        threads: int,
        device: torch.device,
        spread_limit: float = SPREAD_LIMIT,
    ) -> LoadCheck:
        """Judge a :func:`round_robin` result timed between the two ``loads``."""
        cores = os.cpu_count() or 1
        worst = max(t.spread for t in timed.values())
        loaded = any(v is not None and v > cores for v in loads)
        busy = loaded or worst > spread_limit
        has_cpu = all(t.cpu_speedup is not None for t in timed.values())
        basis = "cpu" if busy and device.type == "cpu" and has_cpu else "wall"
        return cls(loads[0], loads[1], cores, threads, worst, spread_limit, busy, basis)

    def warning(self) -> str | None:
        """The warning to print and put in the reports (None when the machine was quiet)."""
        if not self.busy:
            return None
        why = []
        loads = [v for v in (self.load_start, self.load_end) if v is not None]
        if loads and max(loads) > self.cpu_count:
            why.append(f"load average {max(loads):.1f} on {self.cpu_count} cores")
        if self.max_spread > self.spread_limit:
            why.append(
                f"per-round speedups spread up to +-{100 * self.max_spread:.0f} % "
                f"(limit {100 * self.spread_limit:.0f} %)"
            )
        text = "the machine was busy while timing (" + "; ".join(why) + "): "
        text += (
            "speedups are taken from process CPU time (wall time depends on what else runs), "
            "and ms/img is inflated"
            if self.basis == "cpu"
            else "latencies and speedups may be off"
        )
        if self.threads > 1:
            text += f"; re-run with --threads 1 (this run used {self.threads})"
        else:
            text += "; re-run on a quieter machine for wall-time speedups"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the warning included."""
        return {
            "load_average": [self.load_start, self.load_end],
            "cpu_count": self.cpu_count,
            "threads": self.threads,
            "max_spread": self.max_spread,
            "spread_limit": self.spread_limit,
            "busy": self.busy,
            "speedup_basis": self.basis,
            "warning": self.warning(),
        }

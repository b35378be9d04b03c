"""The bench runner: every row on the same noises and conditions, timed and scored, resumable.

For each row: generate the run's samples (the reference set's: seeded noise, the model's
example conditions), measure peak memory over one quality batch, and score PSNR / RMSE against
the reference samples from the same noise, plus the model's domain metrics when the models
package has some for it (FDD / KID / class accuracy for digits models). Then every row (kept
ones too) is timed on a ``timing_batch`` generation round-robin: each round times every row
once in a shuffled order, the baseline included, and a row's speedup is the median of its
per-round ratios to the baseline, so load that drifts during the run cancels out.
Each finished row is written to ``results.json`` atomically, so an interrupted run resumes where
it stopped. Under ``accelerate launch`` the quality batches are split between processes and
gathered on the main process (batch boundaries do not depend on the process count, so the
metrics are identical to a one-process run); timing is done by the main process alone.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import re
import subprocess
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffspeed.bench.config import BenchPlan, BenchSettings, Row
from diffspeed.bench.methods import (
    METHODS,
    BenchContext,
    Generator,
    build_generator,
    family_of,
    load_method_modules,
)
from diffspeed.bench.timing import (
    MIN_CALL_S,
    SPREAD_LIMIT,
    LoadCheck,
    PeakMemory,
    load_average,
    round_robin,
)
from diffspeed.core.contract import DenoiserLike, innermost, network_of
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError, unknown_name
from diffspeed.eval.reference import Reference, ReferenceSpec, reference_set
from diffspeed.models.io import atomic_write_json, param_bytes, save_weights, weights_digest
from diffspeed.progress import Progress

log = logging.getLogger("diffspeed")

RESULTS = "results.json"
#: Format version of ``results.json``.
RESULTS_VERSION = 1


# --- the model under test ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelOptions:
    """How to load the model under test.

    Attributes:
        source: None (the embedded teacher), a teacher ``.safetensors`` file, a diffusers folder
            (``unet/`` and ``scheduler/`` subfolders) or ``module:function`` returning a denoiser.
        shape: ``(C, H, W)`` of one image when the model's spec does not say it.
        uncond: the model's unconditional inputs (``{cond key: value}``) for guidance, when
            its spec does not give them (a diffusers class-conditional UNet's null class).
        device: where to run (default: the accelerate process's device, else CPU).
    """

    source: str | None = None
    shape: tuple[int, ...] | None = None
    uncond: dict[str, Any] | None = None
    device: str | None = None


def _load_diffusers(path: Path, uncond: dict[str, Any] | None) -> Any:
    import diffusers

    from diffspeed.core.adapters import from_diffusers
    from diffspeed.models.io import check_safetensors_folder

    check_safetensors_folder(path)
    for sub in ("unet", "scheduler"):
        if not (path / sub).is_dir():
            raise WeightsError(
                f"{path} is not a diffusers model folder: it has no {sub}/ subfolder "
                "(expected unet/ and scheduler/, as written by save_pretrained)"
            )
    try:
        unet = diffusers.UNet2DModel.from_pretrained(
            path, subfolder="unet", local_files_only=True, use_safetensors=True
        )
        sched = diffusers.DDPMScheduler.from_pretrained(
            path, subfolder="scheduler", local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise WeightsError(f"cannot load the diffusers model in {path}: {e}") from None
    unet.eval().requires_grad_(False)
    return from_diffusers(unet, sched, uncond=uncond)


def _load_import_path(spec: str) -> Any:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"model {spec!r}: module {module_name!r} has no function {func_name!r}")
    den = fn()
    if not isinstance(den, DenoiserLike):
        raise UnsupportedModelError(
            f"model {spec!r} returned {type(den).__name__}, not a denoiser; return a "
            "diffspeed denoiser (diffspeed.wrap / from_diffusers / VEDenoiser / ...)"
        )
    return den


def _set_uncond(den: Any, uncond: dict[str, Any]) -> None:
    """Give the model's spec the unconditional inputs ``uncond`` (merged into its own)."""
    spec = den.cond_spec
    unknown = sorted(set(uncond) - set(spec.keys)) if spec.keys is not None else []
    if unknown:
        raise ConfigError(
            f"--uncond names {unknown}, which the model does not take; its cond keys are "
            f"{list(spec.keys or ())}"
        )
    innermost(den).cond_spec = replace(spec, uncond={**(spec.uncond or {}), **uncond})


def load_model(opts: ModelOptions, guidance: float, device: torch.device) -> BenchContext:
    """Load the model under test as a :class:`BenchContext`."""
    from diffspeed.models.scoring import scoring_for
    from diffspeed.models.teacher import load_teacher

    src = opts.source
    diffusers_folder = src is not None and Path(src).is_dir()
    if src is None or src.endswith(".safetensors"):
        den = load_teacher(src)
    elif diffusers_folder:
        den = _load_diffusers(Path(src), opts.uncond)
    elif re.fullmatch(r"[\w.]+:\w+", src):
        den = _load_import_path(src)
    else:
        raise ConfigError(
            f"model {src!r} is not a teacher .safetensors file, a diffusers folder (unet/ + "
            "scheduler/) or a Python import path module:function"
        )
    if opts.uncond and not diffusers_folder:  # from_diffusers took it above
        _set_uncond(den, opts.uncond)
    shape = tuple(opts.shape) if opts.shape else den.cond_spec.sample_shape
    if not shape:
        raise ConfigError(
            f"model {src!r} does not say its image shape; pass --shape C,H,W "
            "(or give its CondSpec a sample_shape)"
        )
    if isinstance(den, torch.nn.Module):
        den.to(device)  # the network and the adapter's buffers
    return BenchContext(
        denoiser=den,
        sample_shape=tuple(int(s) for s in shape),
        guidance=guidance,
        device=device,
        model_size_bytes=param_bytes(network_of(den)),
        scoring=scoring_for(den.cond_spec),
    )


# --- the reference set ------------------------------------------------------------------------
def _reference(ctx: BenchContext, s: BenchSettings, progress: bool) -> Reference:
    """The run's inputs (noise, conditions, seeds) and the reference outputs from them."""
    spec = ReferenceSpec(
        n=s.samples,
        seed=s.seed,
        guidance=s.guidance,
        solver=s.reference_solver,
        steps=s.reference_steps,
        schedule=s.reference_schedule,
    )
    return reference_set(
        spec, denoiser=ctx.denoiser, sample_shape=ctx.sample_shape, progress=progress
    )


# --- metrics ----------------------------------------------------------------------------------
def quality(x: torch.Tensor, ref: Reference, ctx: BenchContext) -> dict[str, float | None]:
    """PSNR / RMSE vs the reference, and the model's domain metrics (FDD, KID, accuracy;
    None when the model has none)."""
    from diffspeed.eval import metrics

    out: dict[str, float | None] = {
        "psnr": metrics.psnr(x, ref.samples),
        "rmse": metrics.rmse(x, ref.samples),
        "fdd": None,
        "kid": None,
        "accuracy": None,
    }
    if ctx.scoring is not None:
        out.update(ctx.scoring.score(x, ref.cond))
    return out


# --- manifest ---------------------------------------------------------------------------------
def _git_commit() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, packages: tuple[str, ...]) -> dict[str, Any]:
    """Versions of ``packages``, Python, platform, threads and device: the part of a bench
    manifest that describes the machine."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": _device_name(device),
        "git": _git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def manifest(ctx: BenchContext, s: BenchSettings, ref: Reference, procs: int) -> dict:
    """Everything needed to reproduce the numbers (versions, threads, device, seeds, commit)."""
    packages = ("diffspeed", "torch", "diffusers", "accelerate", "numpy", "scipy", "safetensors")
    return {
        **environment(ctx.device, packages),
        "processes": procs,
        "seeds": {
            "reference_seed": s.seed,
            "noise_seeds": f"seed * 1_000_003 + i for i < {s.samples}",
            "first": ref.spec.seeds()[:3],
        },
        "reference_digest": ref.digest,
        "model_digest": weights_digest(network_of(ctx.denoiser)),
        "sample_shape": list(ctx.sample_shape),
        "cond_keys": None if ctx.cond_spec.keys is None else list(ctx.cond_spec.keys),
    }


# --- running ----------------------------------------------------------------------------------
class _Single:
    """Stand-in for accelerate's state in a one-process run."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def split_between_processes(self, items: list) -> Any:
        return nullcontext(items)

    def wait_for_everyone(self) -> None:
        return None

    def main_process_first(self) -> Any:
        return nullcontext()


def _state() -> Any:
    """accelerate's PartialState under ``accelerate launch`` (several processes), else one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # without an accelerator, accelerate only forms a CPU (gloo) group when told cpu=True
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        return PartialState(cpu=cpu or not torch.cuda.is_available())
    return _Single()


def _gather(parts: list[tuple[int, np.ndarray]], procs: int) -> list[tuple[int, np.ndarray]]:
    if procs == 1:
        return parts
    from accelerate.utils import gather_object

    return gather_object(parts)


def _slug(row: Row) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", row.label)[:60] + "-" + row.digest()


def _run_key(s: BenchSettings, ctx: BenchContext, ref: Reference, model: str | None) -> str:
    data = {"settings": asdict(s), "model": model, "reference": ref.digest}
    data["device"] = str(ctx.device)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_rows(plan: BenchPlan) -> list[Row]:
    """The baseline row first, then the plan's rows (a copy of the baseline is dropped)."""
    load_method_modules(plan.settings.plugins)
    base = plan.settings.baseline_row()
    rows = [base]
    for r in plan.rows:
        same = Row.from_dict({**r.to_dict(), "name": base.label}).digest() == base.digest()
        if same:
            continue
        if r.label == base.label:
            raise ConfigError(f"row {r.label!r} has the baseline's name; rename it")
        rows.append(r)
    for r in rows:  # unknown methods fail before anything runs
        if r.kind not in METHODS:
            raise unknown_name(f"method of row {r.label!r}:", r.kind, METHODS.names())
    return rows


def run_bench(
    plan: BenchPlan,
    out: str | Path,
    *,
    model: ModelOptions = ModelOptions(),
    resume: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every row of ``plan`` and write ``results.json`` (and the report) under ``out``.

    Args:
        plan: settings and rows (see :mod:`diffspeed.bench.config`).
        out: output folder (``results.json``, ``samples/``, the report files).
        model: the model under test (default: the embedded teacher).
        resume: keep finished rows of an earlier run with the same settings and model.
        progress: show rich progress bars.

    Returns:
        The results dict written to ``results.json``.
    """
    from diffspeed.bench.report import write_report

    s = plan.settings
    out = Path(out)
    torch.set_num_threads(s.threads)
    state = _state()
    device = torch.device(model.device or getattr(state, "device", "cpu"))
    rows = plan_rows(plan)
    ctx = load_model(model, s.guidance, device)
    # every row is built first, so a bad configuration fails before anything runs
    gens = {row.label: build_generator(row, ctx) for row in rows}
    with state.main_process_first():
        ref = _reference(ctx, s, progress and state.is_main_process)
    results = load_results(out, _run_key(s, ctx, ref, model.source), resume)
    if state.is_main_process and "reference" not in results:
        results["reference"] = {"digest": ref.digest, **quality(ref.samples, ref, ctx)}
        results["reference"].update(
            solver=s.reference_solver,
            steps=s.reference_steps,
            schedule=s.reference_schedule,
            samples_file="samples/reference.safetensors",
        )
        save_weights(out / "samples" / "reference.safetensors", {"samples": ref.samples})
    results["manifest"] = manifest(ctx, s, ref, state.num_processes)
    results["settings"] = asdict(s)
    results["order"] = [r.label for r in rows]
    results["baseline"] = rows[0].label
    bar = Progress(progress and state.is_main_process)
    with bar:
        task = bar.add("rows", len(rows))
        for row in rows:
            done = results["rows"].get(row.label)
            if done is not None and done.get("digest") == row.digest():
                log.info("row %s: kept from %s", row.label, out / RESULTS)
                bar.advance(task)
                continue
            record = _run_row(row, gens[row.label], ctx, ref, s, state, out, bar)
            if state.is_main_process:
                results["rows"][row.label] = record
                atomic_write_json(out / RESULTS, results)
            state.wait_for_everyone()
            bar.advance(task)
    if state.is_main_process:
        _time_rows(rows, gens, ctx, ref, s, results, bar)
        _add_ratios(results)
        atomic_write_json(out / RESULTS, results)
        write_report(results, out)
    state.wait_for_everyone()
    return results


def load_results(out: Path, key: str, resume: bool, kind: str | None = None) -> dict[str, Any]:
    """The results of an earlier run in ``out`` to resume (same run key, results version and
    bench ``kind``), or a fresh record."""
    path = out / RESULTS
    fresh = {"version": RESULTS_VERSION, "run_key": key, "rows": {}}
    if kind is not None:
        fresh["kind"] = kind
    if not resume or not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; starting a fresh run", path)
        return fresh
    if (old.get("run_key"), old.get("version"), old.get("kind")) != (key, RESULTS_VERSION, kind):
        log.warning("%s was written with other settings or another model; starting afresh", path)
        return fresh
    return old


def _run_row(
    row: Row,
    gen: Generator,
    ctx: BenchContext,
    ref: Reference,
    s: BenchSettings,
    state: Any,
    out: Path,
    bar: Progress,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    log.info("row %s: computing", row.label)
    batches = [(i, min(i + s.batch_size, s.samples)) for i in range(0, s.samples, s.batch_size)]
    seeds, select = ref.spec.seeds(), ctx.cond_spec.select
    parts = []
    peaks: list[PeakMemory] = []
    task = bar.add(row.label, s.samples)
    with state.split_between_processes(batches) as mine:
        for a, b in mine:
            with PeakMemory(ctx.device) as meter:
                x = gen.generate(ref.noise[a:b], select(ref.cond, slice(a, b)), seeds[a:b])
            peaks.append(meter)
            parts.append((a, x.detach().float().cpu().numpy()))
            bar.advance(task, b - a)
    # the first batch pays one-time costs (lazy initialisation), so it counts only when alone
    peak = max(peaks[1:] or peaks, key=lambda m: m.peak_bytes) if peaks else None
    parts = _gather(parts, state.num_processes)
    bar.remove(task)
    if not state.is_main_process:
        return {}
    x = torch.from_numpy(np.concatenate([p for _, p in sorted(parts, key=lambda t: t[0])]))
    samples_file = Path("samples") / f"{_slug(row)}.safetensors"
    save_weights(out / samples_file, {"samples": x})
    record = {
        "name": row.label,
        "digest": row.digest(),
        "row": row.to_dict(),
        "method": row.kind,
        "family": family_of(row),
        "nfe": int(gen.nfe),
        "rounds": int(gen.rounds),
        "peak_mem_bytes": int(peak.peak_bytes) if peak is not None else None,
        "peak_mem_kind": peak.kind if peak is not None else None,
        "model_size_bytes": int(gen.model_size_bytes),
        "disk_size_bytes": getattr(gen, "disk_size_bytes", None),
        "samples_file": str(samples_file),
        "computed": {
            "pid": os.getpid(),
            "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": time.perf_counter() - t_start,
        },
    }
    record.update(quality(x, ref, ctx))
    return record


def _time_rows(rows, gens, ctx, ref, s: BenchSettings, results: dict[str, Any], bar) -> None:
    """Latency of every row (kept rows too), timed round-robin against the baseline: each of
    ``s.repeats`` rounds (more, up to three times as many, while ratios spread) times every row
    once on ``timing_batch`` images, in a shuffled order; wall and process CPU time."""
    k = min(s.timing_batch, s.samples)
    noise, cond, seeds = (
        ref.noise[:k],
        ctx.cond_spec.select(ref.cond, slice(0, k)),
        ref.spec.seeds(),
    )

    def call(gen):
        return lambda: gen.generate(noise, cond, seeds[:k])

    task = bar.add("timing (round-robin)", 1)
    load_start = load_average()
    timed = round_robin(
        {row.label: call(gens[row.label]) for row in rows},
        baseline=results["baseline"], device=ctx.device, warmup=s.warmup, rounds=s.repeats,
        max_rounds=3 * s.repeats, spread_limit=SPREAD_LIMIT, min_call_s=MIN_CALL_S, seed=s.seed,
    )  # fmt: skip
    check = LoadCheck.of(
        timed, loads=(load_start, load_average()), threads=s.threads, device=ctx.device
    )
    bar.advance(task)
    for label, t in timed.items():
        rec = results["rows"][label]
        rec["latency_s"] = t.median_s / k
        rec["cpu_s"] = t.cpu_median_s / k if t.cpu_median_s is not None else None
        rec["timing"] = {**t.to_dict(), "batch": k, "warmup": s.warmup}
        rec["wall_speedup"] = t.speedup
        rec["cpu_speedup"] = t.cpu_speedup
        rec["spread"] = t.cpu_spread if check.basis == "cpu" else t.spread
        rec["speedup"] = t.cpu_speedup if check.basis == "cpu" else t.speedup
    results["timing"] = {**check.to_dict(), "rounds": len(timed[results["baseline"]].runs_s)}
    results["load_average"] = check.load_end


def _add_ratios(results: dict[str, Any]) -> None:
    """FDD relative to the reference (in place)."""
    ref_fdd = results.get("reference", {}).get("fdd")
    for rec in results["rows"].values():
        rec["fdd_vs_reference"] = (
            rec["fdd"] / ref_fdd if rec.get("fdd") is not None and ref_fdd else None
        )

"""The bench runner: every row on the same noises and labels, timed and scored, resumable.

For each row: generate the run's samples (the first ``samples`` of the reference set: seeded
noise, class-balanced labels), time a ``timing_batch`` generation (warm-up, median of repeats,
fixed threads), measure peak memory over one quality batch, and score FDD / KID / class
accuracy (digits models) and PSNR / RMSE against the reference samples from the same noise.
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
from dataclasses import asdict, dataclass
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
from diffspeed.bench.timing import PeakMemory, time_call
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError, unknown_name
from diffspeed.models.io import atomic_write_json, load_weights, save_weights

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
        shape: ``(C, H, W)`` of one image when the model cannot tell (import paths).
        classes: number of class labels (overrides what the model says; 0: unconditional).
        null_label: the unconditional label used for guidance.
        device: where to run (default: the accelerate process's device, else CPU).
    """

    source: str | None = None
    shape: tuple[int, ...] | None = None
    classes: int | None = None
    null_label: int | None = None
    device: str | None = None


def _param_bytes(module: Any) -> int:
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _weights_digest(module: Any) -> str:
    h = hashlib.sha256()
    if isinstance(module, torch.nn.Module):
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_diffusers(path: Path) -> tuple[Any, dict[str, Any]]:
    import diffusers

    from diffspeed.core.adapters import from_diffusers

    for sub in ("unet", "scheduler"):
        if not (path / sub).is_dir():
            raise WeightsError(
                f"{path} is not a diffusers model folder: it has no {sub}/ subfolder "
                "(expected unet/ and scheduler/, as written by save_pretrained)"
            )
    try:
        unet = diffusers.UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        sched = diffusers.DDPMScheduler.from_pretrained(
            path, subfolder="scheduler", local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise WeightsError(f"cannot load the diffusers model in {path}: {e}") from None
    unet.eval().requires_grad_(False)
    den = from_diffusers(unet, sched)
    cfg = unet.config
    k = int(cfg.get("num_class_embeds") or 0)
    info = {
        "shape": (int(cfg["in_channels"]), int(cfg["sample_size"]), int(cfg["sample_size"])),
        "classes": max(0, k - 1),
        "null_label": k - 1 if k > 1 else None,
    }
    return den, info


def _load_import_path(spec: str) -> tuple[Any, dict[str, Any]]:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"model {spec!r}: module {module_name!r} has no function {func_name!r}")
    den = fn()
    if not callable(den) or not all(hasattr(den, a) for a in ("sigma_min", "sigma_max", "nfe")):
        raise UnsupportedModelError(
            f"model {spec!r} returned {type(den).__name__}, not a denoiser; return a "
            "diffspeed denoiser (diffspeed.wrap / from_diffusers / VEDenoiser / ...)"
        )
    info = {
        "shape": getattr(den, "sample_shape", None),
        "classes": int(getattr(den, "num_classes", 0)),
        "null_label": getattr(den, "null_label", None),
    }
    return den, info


def load_model(opts: ModelOptions, guidance: float, device: torch.device) -> BenchContext:
    """Load the model under test as a :class:`BenchContext`."""
    from diffspeed.models.teacher import ASSETS, load_teacher

    src = opts.source
    teacher_path = None
    if src is None or src.endswith(".safetensors"):
        teacher_path = Path(src) if src else ASSETS / "teacher.safetensors"
        den = load_teacher(teacher_path)
        info = {"shape": (1, 8, 8), "classes": 10, "null_label": den.null_label}
    elif Path(src).is_dir():
        den, info = _load_diffusers(Path(src))
    elif re.fullmatch(r"[\w.]+:\w+", src):
        den, info = _load_import_path(src)
    else:
        raise ConfigError(
            f"model {src!r} is not a teacher .safetensors file, a diffusers folder (unet/ + "
            "scheduler/) or a Python import path module:function"
        )
    if opts.classes is not None:
        info["classes"] = opts.classes
    if opts.null_label is not None:
        info["null_label"] = opts.null_label
    shape = tuple(opts.shape) if opts.shape else info["shape"]
    if not shape:
        raise ConfigError(
            f"model {src!r} does not say its image shape; pass --shape C,H,W "
            "(or give the denoiser a sample_shape attribute)"
        )
    model = getattr(den, "model", None)
    if isinstance(den, torch.nn.Module):
        den.to(device)  # the network and the adapter's buffers
    return BenchContext(
        denoiser=den,
        sample_shape=tuple(int(s) for s in shape),
        num_classes=int(info["classes"]),
        null_label=info["null_label"],
        guidance=guidance,
        device=device,
        model_size_bytes=_param_bytes(model),
        teacher_path=teacher_path,
        is_digits=tuple(shape) == (1, 8, 8) and int(info["classes"]) == 10,
    )


# --- the reference set ------------------------------------------------------------------------
@dataclass
class RunReference:
    """The run's inputs (noise, labels, seeds) and the reference outputs from the same noise."""

    noise: torch.Tensor
    labels: torch.Tensor
    seeds: list[int]
    samples: torch.Tensor
    digest: str


def _reference(ctx: BenchContext, s: BenchSettings, cache_dir: Path, progress: bool):
    from diffspeed.eval.reference import ReferenceSpec, reference_set
    from diffspeed.solvers import sample, seeded_noise

    spec = ReferenceSpec(
        n=s.samples,
        seed=s.seed,
        guidance=s.guidance,
        solver=s.reference_solver,
        steps=s.reference_steps,
        schedule=s.reference_schedule,
    )
    if ctx.teacher_path is not None:
        ref = reference_set(spec, teacher_path=ctx.teacher_path, progress=progress)
        return RunReference(ref.noise, ref.labels, spec.seeds(), ref.samples, ref.digest)
    # a user's model: the same recipe, cached beside the results
    digest = _weights_digest(getattr(ctx.denoiser, "model", None))
    key_src = repr((asdict(spec), ctx.sample_shape, digest))
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir / f"reference-{key}.safetensors"
    labels = spec.labels() % max(1, ctx.num_classes)
    noise = seeded_noise(spec.seeds(), ctx.sample_shape)
    if path.is_file():
        t = load_weights(path)
        digest = hashlib.sha256(t["samples"].numpy().tobytes()).hexdigest()[:16]
        return RunReference(noise, labels, spec.seeds(), t["samples"], digest)
    den = ctx.guided(s.guidance)
    outs = []
    for i in range(0, s.samples, s.batch_size):
        sl = slice(i, i + s.batch_size)
        x = sample(
            den,
            noise[sl].to(ctx.device),
            spec.solver,
            spec.steps,
            spec.schedule,
            cond=ctx.cond(labels[sl]),
        )
        outs.append(x.float().cpu())
    samples = torch.cat(outs)
    save_weights(path, {"samples": samples})
    digest = hashlib.sha256(samples.numpy().tobytes()).hexdigest()[:16]
    return RunReference(noise, labels, spec.seeds(), samples, digest)


# --- metrics ----------------------------------------------------------------------------------
def quality(x: torch.Tensor, ref: RunReference, ctx: BenchContext) -> dict[str, float | None]:
    """FDD, KID, class accuracy (digits models; else None) and PSNR / RMSE vs the reference."""
    from diffspeed.eval import metrics

    out: dict[str, float | None] = {
        "psnr": metrics.psnr(x, ref.samples),
        "rmse": metrics.rmse(x, ref.samples),
        "fdd": None,
        "kid": None,
        "accuracy": None,
    }
    if ctx.is_digits:
        out["fdd"] = metrics.fdd(x)
        out["kid"] = metrics.kid_score(x)
        out["accuracy"] = metrics.class_accuracy(x, ref.labels)
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


def manifest(ctx: BenchContext, s: BenchSettings, ref: RunReference, procs: int) -> dict:
    """Everything needed to reproduce the numbers (versions, threads, device, seeds, commit)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("diffspeed", "torch", "diffusers", "accelerate", "numpy", "scipy", "safetensors"):
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
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "processes": procs,
        "seeds": {
            "reference_seed": s.seed,
            "noise_seeds": f"seed * 1_000_003 + i for i < {s.samples}",
            "first": ref.seeds[:3],
        },
        "git": _git_commit(),
        "reference_digest": ref.digest,
        "model_digest": _weights_digest(getattr(ctx.denoiser, "model", None)),
        "sample_shape": list(ctx.sample_shape),
        "num_classes": ctx.num_classes,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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


def _run_key(s: BenchSettings, ctx: BenchContext, ref: RunReference, model: str | None) -> str:
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
        ref = _reference(ctx, s, out, progress and state.is_main_process)
    results = _load_results(out, _run_key(s, ctx, ref, model.source), resume)
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
    bar = _Progress(progress and state.is_main_process)
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
        _add_ratios(results)
        atomic_write_json(out / RESULTS, results)
        write_report(results, out)
    state.wait_for_everyone()
    return results


def _load_results(out: Path, key: str, resume: bool) -> dict[str, Any]:
    path = out / RESULTS
    fresh = {"version": RESULTS_VERSION, "run_key": key, "rows": {}}
    if not resume or not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; starting a fresh run", path)
        return fresh
    if old.get("run_key") != key or old.get("version") != RESULTS_VERSION:
        log.warning("%s was written with other settings or another model; starting afresh", path)
        return fresh
    return old


def _run_row(
    row: Row,
    gen: Generator,
    ctx: BenchContext,
    ref: RunReference,
    s: BenchSettings,
    state: Any,
    out: Path,
    bar: _Progress,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    log.info("row %s: computing", row.label)
    batches = [(i, min(i + s.batch_size, s.samples)) for i in range(0, s.samples, s.batch_size)]
    parts = []
    peak = None
    task = bar.add(row.label, s.samples)
    with state.split_between_processes(batches) as mine:
        for a, b in mine:
            meter = PeakMemory(ctx.device) if peak is None else nullcontext()
            with meter:
                x = gen.generate(ref.noise[a:b], ref.labels[a:b], ref.seeds[a:b])
            if peak is None:
                peak = meter
            parts.append((a, x.detach().float().cpu().numpy()))
            bar.advance(task, b - a)
    parts = _gather(parts, state.num_processes)
    bar.remove(task)
    if not state.is_main_process:
        return {}
    x = torch.from_numpy(np.concatenate([p for _, p in sorted(parts, key=lambda t: t[0])]))
    # timing on the main process only: warm-up, then the median of repeats
    k = min(s.timing_batch, s.samples)
    noise, labels, seeds = ref.noise[:k], ref.labels[:k], ref.seeds[:k]
    timing = time_call(
        lambda: gen.generate(noise, labels, seeds),
        device=ctx.device,
        warmup=s.warmup,
        repeats=s.repeats,
    )
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
        "latency_s": timing.median_s / k,
        "timing": {**timing.to_dict(), "batch": k},
        "peak_mem_bytes": int(peak.peak_bytes) if peak is not None else None,
        "peak_mem_kind": peak.kind if peak is not None else None,
        "model_size_bytes": int(gen.model_size_bytes),
        "samples_file": str(samples_file),
        "computed": {
            "pid": os.getpid(),
            "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": time.perf_counter() - t_start,
        },
    }
    record.update(quality(x, ref, ctx))
    return record


def _add_ratios(results: dict[str, Any]) -> None:
    """Speedup vs the baseline row and FDD relative to the reference (in place)."""
    base = results["rows"].get(results["baseline"])
    ref_fdd = results.get("reference", {}).get("fdd")
    for rec in results["rows"].values():
        rec["speedup"] = base["latency_s"] / rec["latency_s"] if base else None
        rec["fdd_vs_reference"] = (
            rec["fdd"] / ref_fdd if rec.get("fdd") is not None and ref_fdd else None
        )


class _Progress:
    """rich progress bars, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.p = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )

    def __enter__(self) -> _Progress:
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def add(self, name: str, total: int) -> Any:
        return self.p.add_task(name, total=total) if self.p is not None else None

    def advance(self, task: Any, n: int = 1) -> None:
        if self.p is not None:
            self.p.advance(task, n)

    def remove(self, task: Any) -> None:
        if self.p is not None:
            self.p.remove_task(task)

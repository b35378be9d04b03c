"""The pipeline bench: rows run through a diffusers text-to-image pipeline's own ``__call__``.

``diffspeed bench --model mini-sd`` (or a pipeline folder with ``model_index.json``) runs each
row end to end: prompt encoding, the denoising loop with the row's scheduler (diffspeed's
:class:`~diffspeed.integrations.diffusers.Scheduler` for ``solver`` rows, a diffusers scheduler
for ``peer`` rows, a feature cache on the UNet for ``cache`` rows) and the VAE decode. Every row
starts from the same per-sample seeded latents (sample ``i``: seed ``seed * 1_000_003 + i``)
and the same prompts.

- Quality: PSNR / RMSE of the decoded images to the reference sampler's images (Heun, 100
  Karras steps by default) from the same latents; for an embedded model, its domain metrics
  (:func:`diffspeed.models.pipeline_scoring.pipeline_scoring_for`: FDD and class accuracy for
  mini-sd).
- Speed: end-to-end latency per image, timed round-robin: after warm-up, each round times every
  row once (the baseline in every round); latency is the median over rounds, speedup the
  median of the per-round ratios baseline / row. Text encoding and VAE decoding are timed
  inside the same calls, which gives each row's share of text encoding, denoising loop and
  VAE decode.

Rows whose quality is in ``results.json`` from an earlier run with the same settings are kept;
timing always runs again (it is a comparison within one run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.bench.config import BenchPlan, BenchSettings, Row, load_plan
from diffspeed.bench.timing import (
    SPREAD_LIMIT,
    LoadCheck,
    PeakMemory,
    load_average,
    round_robin,
    synchronize,
)
from diffspeed.errors import ConfigError, UnsupportedModelError, WeightsError, unknown_name
from diffspeed.models.io import atomic_write_json, load_weights, param_bytes, save_weights
from diffspeed.progress import Progress

log = logging.getLogger("diffspeed")

#: Names ``--model`` accepts for the shipped models.
SHIPPED_MODELS = ("digits", "mini-sd")
#: Row kinds the pipeline bench runs (other kinds need a bare denoiser: ``diffspeed bench``).
PIPELINE_KINDS = ("solver", "cache", "peer")
#: Schedule of a solver or cache row that names none.
DEFAULT_SCHEDULE = "trailing"
#: The parts of an end-to-end call whose time share is reported.
PARTS = ("text encoding", "denoising loop", "VAE decode")


# --- which model ------------------------------------------------------------------------------
def is_pipeline_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (it holds ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def resolve_model(source: str | None) -> tuple[str, str | None]:
    """Sort a ``--model`` value: ``("pipeline", folder)`` for mini-sd or a pipeline folder,
    ``("denoiser", source)`` for the digits teacher (None), a teacher ``.safetensors``, a
    diffusers ``unet/`` + ``scheduler/`` folder or ``module:function``.

    Raises:
        ConfigError: an unknown name (the message lists the shipped models).
        WeightsError: ``mini-sd`` is not installed (not trained yet in this checkout).
    """
    if source is None or source == "digits":
        return "denoiser", None
    if source == "mini-sd":
        from diffspeed.models import mini_sd_path

        folder = mini_sd_path()
        if not is_pipeline_folder(folder):
            raise WeightsError(
                f"mini-sd is not installed at {folder}; train it there with "
                f"`diffspeed train-mini-sd --out {folder}`"
            )
        return "pipeline", str(folder)
    path = Path(source)
    if path.is_dir():
        return ("pipeline" if is_pipeline_folder(path) else "denoiser"), source
    if source.endswith(".safetensors") or re.fullmatch(r"[\w.]+:\w+", source):
        return "denoiser", source
    raise ConfigError(
        f"unknown model {source!r} (no file or folder of that name); the shipped models are "
        f"{', '.join(SHIPPED_MODELS)}. A diffusers pipeline folder (with model_index.json), a "
        "diffusers folder with unet/ and scheduler/, a teacher .safetensors file or a Python "
        "import path module:function is also accepted"
    )


def pipeline_demo_plan() -> BenchPlan:
    """The rows of ``diffspeed demo --model mini-sd`` (``demo_mini_sd.toml``)."""
    return load_plan(Path(__file__).with_name("demo_mini_sd.toml"))


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline under test.

    Attributes:
        folder: a diffusers text-to-image pipeline folder (safetensors weights only).
        prompts: prompts cycled over the samples; empty: the embedded model's own (mini-sd).
        device: where to run (default CPU).
    """

    folder: str
    prompts: tuple[str, ...] = ()
    device: str | None = None


@contextmanager
def _no_loading_bars() -> Iterator[None]:
    """diffusers' and transformers' loading progress bars off (as they were on exit)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def load_text_to_image(folder: str | Path, device: torch.device | str = "cpu") -> Any:
    """A diffusers text-to-image pipeline from ``folder``, offline, safetensors only.

    Raises:
        WeightsError: pickled weights in the folder, or a folder diffusers cannot load.
        UnsupportedModelError: the pipeline has no UNet, VAE or text encoder.
    """
    import diffusers

    from diffspeed.models.io import check_safetensors_folder

    check_safetensors_folder(folder)
    try:
        with _no_loading_bars():
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                folder, use_safetensors=True, local_files_only=True
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise WeightsError(f"cannot load the diffusers pipeline in {folder}: {e}") from None
    missing = [p for p in ("unet", "vae", "text_encoder") if getattr(pipe, p, None) is None]
    if missing or not hasattr(pipe, "encode_prompt"):
        raise UnsupportedModelError(
            f"{folder} holds a {type(pipe).__name__} without {missing or ['encode_prompt']}; the "
            "pipeline bench runs Stable-Diffusion-like text-to-image pipelines (UNet, VAE, text "
            "encoder); bench a bare UNet folder (unet/ + scheduler/) with the denoiser bench"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --- rows -------------------------------------------------------------------------------------
def _peer_class(row: Row) -> Any:
    import inspect

    import diffusers

    from diffspeed.bench.methods import PEERS

    if row.peer not in PEERS:
        raise unknown_name("peer scheduler", row.peer, PEERS)
    cls = getattr(diffusers, row.peer)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(row.options) - allowed)
    if unknown:
        raise ConfigError(
            f"peer {row.peer} has no option(s) {unknown}; it accepts: {', '.join(sorted(allowed))}"
        )
    return cls


class PipelineRow:
    """One row made ready to run: its scheduler (built from the pipeline's own scheduler
    config), its cache config, steps and guidance scale."""

    def __init__(self, row: Row, base_config: Any, guidance: float) -> None:
        from diffspeed.integrations.diffusers import Scheduler

        self.row, self.label = row, row.label
        if row.kind not in PIPELINE_KINDS:
            raise ConfigError(
                f"row {row.label!r}: a {row.kind!r} row does not run in the pipeline bench; "
                f"pipeline rows are {', '.join(PIPELINE_KINDS)} (run students on a bare "
                "denoiser with diffspeed bench)"
            )
        self.steps = row.steps if row.steps is not None else 50
        self.guidance = guidance if row.guidance is None else float(row.guidance)
        self.cache = None
        if row.kind == "peer":
            self.scheduler = _peer_class(row).from_config(base_config, **row.options)
            return
        if row.solver is None:
            raise ConfigError(f"row {row.label!r}: a {row.kind} row needs 'solver'")
        if row.kind == "cache":
            from diffspeed.cache import config_from_dict

            if not row.cache:
                raise ConfigError(f"row {row.label!r}: a cache row needs a 'cache' table")
            self.cache = config_from_dict(dict(row.cache))
        try:
            self.scheduler = Scheduler.from_config(
                base_config,
                solver=row.solver,
                schedule=row.schedule or DEFAULT_SCHEDULE,
                steps=self.steps,
                solver_options=dict(row.options),
                schedule_options=dict(row.schedule_options),
            )
        except TypeError as e:
            raise ConfigError(f"row {row.label!r}: {e}") from None

    @property
    def family(self) -> str:
        """The row's family (its kind: solver, cache or peer)."""
        return self.row.kind

    @contextmanager
    def installed(self, pipe: Any) -> Iterator[None]:
        """The pipeline with this row's scheduler (and cache, removed on exit)."""
        from diffspeed.cache import apply_cache

        pipe.scheduler = self.scheduler
        handle = apply_cache(pipe, self.cache) if self.cache is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()


# --- running the pipeline ---------------------------------------------------------------------
class _Parts:
    """Times text encoding and VAE decoding inside pipeline calls (wrapping
    ``pipe.encode_prompt`` and ``pipe.vae.decode`` while installed)."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe, self.device = pipe, device
        self.text_s = self.vae_s = 0.0

    def _timed(self, fn: Callable[..., Any], slot: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            setattr(self, slot, getattr(self, slot) + time.perf_counter() - t0)
            return out

        return run

    def __enter__(self) -> _Parts:
        self.text_s = self.vae_s = 0.0
        self.pipe.encode_prompt = self._timed(self.pipe.encode_prompt, "text_s")
        self.pipe.vae.decode = self._timed(self.pipe.vae.decode, "vae_s")
        return self

    def __exit__(self, *exc: object) -> None:
        del self.pipe.encode_prompt
        del self.pipe.vae.decode


class PipelineRun:
    """The pipeline, the run's prompts and latents, and how to generate a slice of them."""

    def __init__(self, pipe: Any, prompts: list[str], seeds: list[int], device: torch.device):
        from diffspeed.solvers.noise import seeded_noise

        self.pipe, self.prompts, self.seeds, self.device = pipe, prompts, seeds, device
        self.base_config = pipe.scheduler.config
        unet = pipe.unet.config
        self.height = self.width = int(unet.sample_size) * int(pipe.vae_scale_factor)
        size = int(unet.sample_size)
        self.latents = seeded_noise(seeds, (int(unet.in_channels), size, size))
        self.size_bytes = sum(
            param_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module)
        )

    def generate(self, row: PipelineRow, a: int, b: int) -> torch.Tensor:
        """Images ``[b - a, C, H, W]`` in [-1, 1] for samples ``a .. b-1`` (row installed)."""
        out = self.pipe(
            prompt=self.prompts[a:b],
            num_inference_steps=row.steps,
            guidance_scale=row.guidance,
            latents=self.latents[a:b].to(self.device),
            output_type="pt",
            height=self.height,
            width=self.width,
        )
        return out.images.float().cpu() * 2 - 1

    def nfe(self) -> int:
        """UNet calls of the last generation (a guided call batches cond and uncond)."""
        return len(self.pipe.scheduler.timesteps)


def _images(run: PipelineRun, row: PipelineRow, s: BenchSettings, bar: Progress) -> tuple:
    """Every sample of ``row`` in quality batches, the peak memory of one batch (the
    largest after the first when there are several: the first pays one-time costs)."""
    parts, peaks = [], []
    task = bar.add(row.label, s.samples)
    with row.installed(run.pipe):
        for a in range(0, s.samples, s.batch_size):
            b = min(a + s.batch_size, s.samples)
            with PeakMemory(run.device) as meter:
                parts.append(run.generate(row, a, b))
            peaks.append(meter)
            bar.advance(task, b - a)
    bar.remove(task)
    # the first batch pays one-time costs (lazy initialisation), so it counts only when alone
    peak = max(peaks[1:] or peaks, key=lambda m: m.peak_bytes)
    return torch.cat(parts), peak, run.nfe()


def _quality(x: torch.Tensor, ref: torch.Tensor, scoring: Any) -> dict[str, float | None]:
    from diffspeed.eval import metrics

    out: dict[str, float | None] = {
        "psnr": metrics.psnr(x, ref),
        "rmse": metrics.rmse(x, ref),
        "fdd": None,
        "kid": None,
        "accuracy": None,
    }
    if scoring is not None:
        out.update(scoring.score(x))
    return out


def _slug(row: Row) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", row.label)[:60] + "-" + row.digest()


def _timings(run: PipelineRun, rows: list[PipelineRow], s: BenchSettings) -> dict[str, dict]:
    """Round-robin end-to-end timing of every row on ``timing_batch`` images, with each row's
    shares of text encoding / denoising loop / VAE decode (medians over rounds)."""
    k = min(s.timing_batch, s.samples)
    shares: dict[str, list[tuple[float, float, float]]] = {r.label: [] for r in rows}

    def call(row: PipelineRow) -> Callable[[], tuple[float, float]]:
        def fn() -> tuple[float, float]:
            with row.installed(run.pipe), _Parts(run.pipe, run.device) as parts:
                synchronize(run.device)
                t0, c0 = time.perf_counter(), time.process_time()
                run.generate(row, 0, k)
                synchronize(run.device)
                total, cpu = time.perf_counter() - t0, time.process_time() - c0
            loop = total - parts.text_s - parts.vae_s
            shares[row.label].append((parts.text_s / total, loop / total, parts.vae_s / total))
            return total, cpu

        return fn

    load_start = load_average()
    timed = round_robin(
        {r.label: call(r) for r in rows}, baseline=rows[0].label, device=run.device,
        warmup=s.warmup, rounds=s.repeats, max_rounds=3 * s.repeats, spread_limit=SPREAD_LIMIT,
        seed=s.seed, self_timed=True,
    )  # fmt: skip
    check = LoadCheck.of(
        timed, loads=(load_start, load_average()), threads=s.threads, device=run.device
    )
    out: dict[str, Any] = {"_check": check}
    for r in rows:
        got = shares[r.label][s.warmup :]
        t = timed[r.label]
        cpu_basis = check.basis == "cpu"
        out[r.label] = {
            "median_s": t.median_s, "cpu_median_s": t.cpu_median_s, "batch": k,
            "timing": t.to_dict(), "wall_speedup": t.speedup, "cpu_speedup": t.cpu_speedup,
            "speedup": t.cpu_speedup if cpu_basis else t.speedup,
            "spread": t.cpu_spread if cpu_basis else t.spread,
            "shares": {part: statistics.median(v[i] for v in got) for i, part in enumerate(PARTS)},
        }  # fmt: skip
    return out


# --- the run ----------------------------------------------------------------------------------
def _manifest(run: PipelineRun, s: BenchSettings, folder: str) -> dict[str, Any]:
    from diffspeed.bench.runner import environment
    from diffspeed.models.io import weights_digest

    packages = ("diffspeed", "torch", "diffusers", "transformers", "numpy", "safetensors")
    return {
        **environment(run.device, packages),
        "processes": 1,
        "pipeline": type(run.pipe).__name__,
        "model": folder,
        "model_digest": weights_digest(run.pipe.unet),
        "image_size": [run.height, run.width],
        "seeds": {
            "noise_seeds": f"seed * 1_000_003 + i for i < {s.samples}",
            "first": run.seeds[:3],
        },
    }


def _run_key(s: BenchSettings, manifest: dict[str, Any], prompts: list[str]) -> str:
    data = {
        "settings": asdict(s),
        "model_digest": manifest["model_digest"],
        "device": manifest["device"],
        "prompts": prompts,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plan_rows(plan: BenchPlan, base_config: Any) -> list[PipelineRow]:
    """The baseline first, then the plan's rows (a copy of the baseline is dropped); every row
    is built here, so a bad one fails before anything runs."""
    s = plan.settings
    if s.plugins:
        raise ConfigError(
            "settings.plugins register row kinds for the denoiser bench; the pipeline bench "
            f"runs {', '.join(PIPELINE_KINDS)} rows only; remove 'plugins'"
        )
    base = s.baseline_row()
    rows = [base]
    for r in plan.rows:
        if Row.from_dict({**r.to_dict(), "name": base.label}).digest() == base.digest():
            continue
        if r.label == base.label:
            raise ConfigError(f"row {r.label!r} has the baseline's name; rename it")
        rows.append(r)
    return [PipelineRow(r, base_config, s.guidance) for r in rows]


def _prompts(opts: PipelineOptions, scoring: Any, n: int) -> list[str]:
    if opts.prompts:
        return [opts.prompts[i % len(opts.prompts)] for i in range(n)]
    if scoring is None:
        raise ConfigError(
            f"{opts.folder} is not an embedded model, so the bench does not know what to ask it "
            "for; pass prompts with --prompt TEXT (repeatable; they cycle over the samples)"
        )
    return scoring.prompts(n)


def _summary(results: dict[str, Any]) -> list[str]:
    """The report's lines on how the run was measured."""
    m, s, ref = results["manifest"], results["settings"], results["reference"]
    base = results["rows"].get(results["baseline"], {})
    shares = base.get("shares") or {}
    split = ", ".join(f"{p} {100 * shares[p]:.1f} %" for p in PARTS if p in shares)
    score = results.get("scoring")
    basis = "CPU time" if results["timing"]["speedup_basis"] == "cpu" else "time"
    return [
        f"{m['pipeline']} from {m['model']}, {m['image_size'][0]}x{m['image_size'][1]} images; "
        f"{s['samples']} samples per row (seeded latents, "
        + (f"{score}'s example prompts" if score else "the given prompts, cycled")
        + f"), guidance {s['guidance']}, quality batches of {s['batch_size']}",
        f"latency: end to end (text encoding, denoising loop, VAE decode) per image of a "
        f"batch of {s['timing_batch']}; {s['warmup']} warm-up call(s) per row, then "
        f"{results['timing']['rounds']} rounds, each timing every row once; median over rounds; "
        f"{m['torch_threads']} torch threads, {m['device']} ({m['device_name']})",
        f"speedup: median over rounds of `{results['baseline']}`'s {basis} in that round / the "
        f"row's {basis}",
        f"where `{results['baseline']}`'s time goes: {split}",
        f"fidelity reference: {ref['solver']} {ref['steps']} steps {ref['schedule']} "
        f"({ref['nfe']} NFE) from the same latents and prompts"
        + (f", its FDD {ref['fdd']:.3f}" if ref.get("fdd") is not None else ""),
        f"torch {m['versions'].get('torch')}, diffusers {m['versions'].get('diffusers')}, "
        f"commit {str(m['git'].get('commit'))[:10]}"
        + (" (dirty)" if m["git"].get("dirty") else "")
        + f", {m['date_utc']}; the whole run took {results['wall_s']:.0f} s",
    ]


def run_pipeline_bench(
    plan: BenchPlan,
    out: str | Path,
    *,
    model: PipelineOptions,
    resume: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every row of ``plan`` through the pipeline in ``model.folder``; write
    ``results.json`` and the report (``report.md``, ``index.html``, plots) under ``out``.

    Args:
        plan: settings and rows (``solver``, ``cache`` and ``peer`` rows).
        out: output folder.
        model: the pipeline folder, prompts and device.
        resume: keep the quality of rows finished by an earlier run with the same settings.
        progress: show rich progress bars.

    Returns:
        The results dict written to ``results.json`` (``kind = "pipeline"``).
    """
    from diffspeed.bench.report import write_report
    from diffspeed.models.pipeline_scoring import pipeline_scoring_for

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the pipeline bench runs in one process; run it without accelerate")
    t_start = time.perf_counter()
    s, out = plan.settings, Path(out)
    torch.set_num_threads(s.threads)
    device = torch.device(model.device or "cpu")
    pipe = load_text_to_image(model.folder, device)
    scoring = pipeline_scoring_for(model.folder)
    prompts = _prompts(model, scoring, s.samples)
    seeds = [s.seed * 1_000_003 + i for i in range(s.samples)]
    run = PipelineRun(pipe, prompts, seeds, device)
    rows = _plan_rows(plan, run.base_config)
    ref_row = PipelineRow(
        Row(
            name="reference",
            solver=s.reference_solver,
            steps=s.reference_steps,
            schedule=s.reference_schedule,
        ),
        run.base_config,
        s.guidance,
    )
    manifest = _manifest(run, s, model.folder)
    from diffspeed.bench.runner import RESULTS, load_results

    results = load_results(out, _run_key(s, manifest, prompts), resume, kind="pipeline")
    results.update(
        manifest=manifest,
        settings=asdict(s),
        order=[r.label for r in rows],
        baseline=rows[0].label,
        scoring=scoring.name if scoring is not None else None,
    )
    bar = Progress(progress)
    with bar:
        ref_file = out / "samples" / "reference.safetensors"
        if "reference" in results and ref_file.is_file():
            ref = load_weights(ref_file)["samples"]
        else:
            ref, _, nfe = _images(run, ref_row, s, bar)
            save_weights(ref_file, {"samples": ref})
            results["reference"] = {
                "solver": s.reference_solver,
                "steps": s.reference_steps,
                "schedule": s.reference_schedule,
                "nfe": nfe,
                "samples_file": "samples/reference.safetensors",
                **_quality(ref, ref, scoring),
            }
        task = bar.add("rows", len(rows))
        for row in rows:
            done = results["rows"].get(row.label)
            if done is None or done.get("digest") != row.row.digest():
                results["rows"][row.label] = _quality_record(run, row, ref, scoring, s, out, bar)
                atomic_write_json(out / RESULTS, results)
            bar.advance(task)
        task = bar.add("timing (round-robin)", 1)
        timed = _timings(run, rows, s)
        bar.advance(task)
    check = timed.pop("_check")
    results["timing"] = {**check.to_dict(), "rounds": len(timed[rows[0].label]["timing"]["runs_s"])}
    ref_fdd = results["reference"].get("fdd")
    for row in rows:
        rec, t = results["rows"][row.label], timed[row.label]
        fdd = rec.get("fdd")
        cpu = t["cpu_median_s"]
        rec.update(
            latency_s=t["median_s"] / t["batch"],
            cpu_s=cpu / t["batch"] if cpu is not None else None,
            speedup=t["speedup"],
            wall_speedup=t["wall_speedup"],
            cpu_speedup=t["cpu_speedup"],
            spread=t["spread"],
            shares=t["shares"],
            timing={**t["timing"], "batch": t["batch"], "warmup": s.warmup},
            fdd_vs_reference=fdd / ref_fdd if fdd is not None and ref_fdd else None,
        )
    results["wall_s"] = time.perf_counter() - t_start
    results["summary"] = _summary(results)
    atomic_write_json(out / RESULTS, results)
    write_report(results, out)
    return results


def _quality_record(
    run: PipelineRun,
    row: PipelineRow,
    ref: torch.Tensor,
    scoring: Any,
    s: BenchSettings,
    out: Path,
    bar: Progress,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    log.info("row %s: computing", row.label)
    x, peak, nfe = _images(run, row, s, bar)
    samples_file = Path("samples") / f"{_slug(row.row)}.safetensors"
    save_weights(out / samples_file, {"samples": x})
    return {
        "name": row.label,
        "digest": row.row.digest(),
        "row": row.row.to_dict(),
        "method": row.row.kind,
        "family": row.family,
        "nfe": nfe,
        "rounds": nfe,
        "guidance": row.guidance,
        "peak_mem_bytes": int(peak.peak_bytes),
        "peak_mem_kind": peak.kind,
        "model_size_bytes": int(run.size_bytes),
        "samples_file": str(samples_file),
        "computed_s": time.perf_counter() - t0,
        **_quality(x, ref, scoring),
    }

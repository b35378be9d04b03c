"""Bench configuration: rows (one method configuration each) and run settings, from TOML or CLI.

A row is a small frozen dataclass; it round-trips to a plain dict (and so to JSON/TOML)::

    [[row]]
    name = "dpm++2m-8"          # optional, derived from the other keys when absent
    solver = "dpmpp_2m"
    steps = 8
    schedule = "karras"

Which builder turns a row into a generator is chosen by ``method`` (see
:mod:`diffspeed.bench.methods`); when absent it is ``"peer"`` if ``peer`` is set, ``"cache"`` if
``cache`` is set, else ``"solver"``; a row with any of the compression keys (``quant``,
``prune``, ``compile``, ``dtype``, ``memory_format``) is ``"compress"`` (its ``cache``, if any,
is installed on the compressed model).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from diffspeed.errors import ConfigError, did_you_mean
from diffspeed.eval.reference import RECOMMENDED_GUIDANCE

#: Row fields that are tables (dicts); on the command line they take dotted sub-keys.
_ROW_DICT_KEYS = ("cache", "options", "schedule_options", "quant")
#: Row fields of the compression methods (:mod:`diffspeed.compress`).
COMPRESS_KEYS = ("quant", "prune", "compile", "dtype", "memory_format")


@dataclass(frozen=True)
class Row:
    """One configuration to benchmark.

    Attributes:
        name: label in the table and plots (derived from the other fields when empty).
        method: row kind, a name registered with :func:`diffspeed.bench.register_method`
            (inferred when empty: ``peer`` -> "peer", ``cache`` -> "cache", else "solver").
        solver, steps, schedule: the diffspeed sampler (``diffspeed.sample``) to run.
        guidance: classifier-free guidance scale (None: the bench's default).
        cache: a cache config dict for ``diffspeed.cache.config_from_dict`` (``{"method": ...}``).
        student: what a student row loads (a shipped name or a weight path; method-specific).
        peer: a diffusers scheduler class name, driven step by step on the same model.
        options: extra keyword options of the solver / scheduler / method.
        schedule_options: keyword options of the schedule (e.g. ``{"rho": 7.0}``).
        quant: a ``diffspeed.compress.Quantize`` dict (``{"format": "w8a8", ...}``; a
            ``weights`` key loads QAT-fine-tuned weights first).
        prune: a folder holding a pruned model (diffusers config + safetensors) to run instead.
        compile: a ``torch.compile`` mode (``"default"``, ``"max-autotune"``, ...).
        dtype: ``"float16"`` or ``"bfloat16"`` weights.
        memory_format: ``"channels_last"``.
        tuned: a ``diffspeed tune`` JSON file; the row runs its configuration (kind "tuned").
    """

    name: str = ""
    method: str = ""
    solver: str | None = None
    steps: int | None = None
    schedule: str | None = None
    guidance: float | None = None
    cache: dict[str, Any] | None = None
    student: str | None = None
    peer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    schedule_options: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, Any] | None = None
    prune: str | None = None
    compile: str | None = None
    dtype: str | None = None
    memory_format: str | None = None
    tuned: str | None = None

    @property
    def kind(self) -> str:
        """The method name used to look up the builder."""
        if self.method:
            return self.method
        if self.tuned is not None:
            return "tuned"
        if any(getattr(self, k) is not None for k in COMPRESS_KEYS):
            return "compress"
        if self.peer is not None:
            return "peer"
        if self.cache is not None:
            return "cache"
        return "solver"

    @property
    def label(self) -> str:
        """The row's name, or one derived from its configuration."""
        if self.name:
            return self.name
        head = self.peer or self.student or self.solver or self.tuned or self.kind
        parts = [str(head)]
        if self.steps is not None:
            parts.append(str(self.steps))
        if self.schedule:
            parts.append(self.schedule)
        if self.guidance is not None:
            parts.append(f"w{self.guidance:g}")
        label = "-".join(parts)
        if self.cache:
            rest = "".join(f"-{v}" for k, v in self.cache.items() if k != "method")
            label += f"+{self.cache.get('method', 'cache')}{rest}"
        if self.quant:
            rest = "".join(f"-{v}" for k, v in self.quant.items() if k not in ("format", "weights"))
            label += f"+{self.quant.get('format', 'quant')}{rest}"
        for key in ("prune", "compile", "dtype", "memory_format"):
            value = getattr(self, key)
            if value is not None:
                label += f"+{Path(value).name if key == 'prune' else value}"
        return label

    def to_dict(self) -> dict[str, Any]:
        """Plain dict without empty fields (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, "", {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "row") -> Row:
        """Build a row from a dict, naming any unknown key and the allowed ones."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a table of keys, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                raise ConfigError(
                    f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: "
                    f"{', '.join(allowed)}"
                )
        for key in _ROW_DICT_KEYS:
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ConfigError(f"{where}: {key!r} must be a table, got {d[key]!r}")
        steps = d.get("steps")
        if steps is not None and (
            not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 10_000
        ):
            raise ConfigError(f"{where}: 'steps' must be an integer in 1..10000, got {steps!r}")
        guidance = d.get("guidance")
        if guidance is not None and (
            not isinstance(guidance, int | float)
            or isinstance(guidance, bool)
            or not math.isfinite(guidance)
        ):
            raise ConfigError(
                f"{where}: 'guidance' must be a number (a finite float such as 2.0), got "
                f"{guidance!r}"
            )
        kw = dict(d)
        if guidance is not None:
            kw["guidance"] = float(guidance)
        for key in ("options", "schedule_options"):
            kw[key] = dict(d.get(key) or {})
        return cls(**kw)

    def digest(self) -> str:
        """Short hash of the configuration (a changed row is recomputed on resume)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class BenchSettings:
    """Settings of one bench run (the ``[settings]`` table of a bench TOML).

    Attributes:
        samples: images per row, drawn for the model's example conditions in order (the
            embedded teacher's cycle through its classes, so a multiple of the class count is
            class-balanced); they are the first ``samples`` of the reference set.
        seed: reference-set seed (sample ``i`` has noise seed ``seed * 1_000_003 + i``).
        guidance: default classifier-free guidance scale of rows and of the reference (the
            teacher's recommended scale by default).
        batch_size: images per generation call for the quality samples.
        warmup, repeats: timing: un-timed warm-up runs, then ``repeats`` round-robin rounds
            (up to three times as many while some row's per-round ratios spread).
        timing_batch: images per timed run (latency per image = time / timing_batch).
        threads: torch intra-op threads (fixed and recorded; 1 by default: bench calls are
            small, and a second thread on a shared machine makes timings collapse, see
            docs/results/bench_load.md).
        reference_solver, reference_steps, reference_schedule: the high-accuracy sampler
            the fidelity (PSNR / RMSE) reference comes from.
        baseline: the row every speedup is measured against (the teacher's 50-step DDIM).
        grid: images per row in ``grid.png`` (the first ones: the first example conditions).
        plugins: modules to import before the rows are resolved (they register row kinds
            with :func:`diffspeed.bench.register_method`).
    """

    samples: int = 200
    seed: int = 0
    guidance: float = RECOMMENDED_GUIDANCE
    batch_size: int = 100
    warmup: int = 1
    repeats: int = 5
    timing_batch: int = 1
    threads: int = 1
    reference_solver: str = "heun"
    reference_steps: int = 100
    reference_schedule: str = "karras"
    baseline: dict[str, Any] = field(
        default_factory=lambda: {"name": "ddim-50 (baseline)", "solver": "ddim", "steps": 50}
    )
    grid: int = 10
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plugins", tuple(self.plugins))
        positive = ("samples", "batch_size", "repeats", "timing_batch", "threads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"settings: {name!r} must be an integer >= 1, got {value!r}")
        if self.samples < 2:
            raise ConfigError("settings: 'samples' must be >= 2 (metrics need two samples)")
        for name in ("warmup", "seed", "reference_steps", "grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"settings: {name!r} must be an integer >= 0, got {value!r}")
        g = self.guidance
        if not isinstance(g, int | float) or isinstance(g, bool) or not math.isfinite(g):
            raise ConfigError(
                f"settings: 'guidance' must be a number (a finite float such as 2.0), got {g!r}"
            )
        for name in ("reference_solver", "reference_schedule"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"settings: {name!r} must be a name (a string)")
        if not isinstance(self.baseline, dict):
            raise ConfigError("settings: 'baseline' must be a table, e.g. {solver = \"ddim\"}")
        Row.from_dict(self.baseline, "settings.baseline")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchSettings:
        """Build settings from a dict, naming any unknown key and the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                raise ConfigError(
                    f"settings: unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: "
                    f"{', '.join(allowed)}"
                )
        types = {f.name: f.type for f in fields(cls)}
        kw = {}
        for key, value in d.items():
            if types[key] == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kw[key] = value
        return cls(**kw)

    def baseline_row(self) -> Row:
        """The baseline as a :class:`Row`."""
        return Row.from_dict(self.baseline, "settings.baseline")

    def with_overrides(self, **kw: Any) -> BenchSettings:
        """A copy with the non-None keyword values replaced."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class BenchPlan:
    """A parsed bench file: settings and rows."""

    settings: BenchSettings
    rows: tuple[Row, ...]


def parse_plan(data: dict[str, Any], source: str = "bench config") -> BenchPlan:
    """Turn a parsed TOML document (``[settings]`` + ``[[row]]`` tables) into a plan."""
    allowed = ("settings", "row")
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{source}: unknown top-level key {key!r}; allowed: [settings] and [[row]] tables"
            )
    settings = BenchSettings.from_dict(dict(data.get("settings", {})))
    raw_rows = data.get("row", [])
    if not isinstance(raw_rows, list):
        raise ConfigError(f"{source}: 'row' must be an array of tables ([[row]])")
    rows = tuple(Row.from_dict(r, f"{source}: row {i + 1}") for i, r in enumerate(raw_rows))
    names = [r.label for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: duplicate row names {dupes}; give each row a unique 'name'")
    return BenchPlan(settings, rows)


def load_plan(path: str | Path) -> BenchPlan:
    """Read a bench TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(
            f"cannot read bench config {path}: {e.strerror}; check the path (or give rows with "
            "--row KEY=VALUE,...)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse_plan(data, str(path))


def demo_plan() -> BenchPlan:
    """The rows of ``diffspeed demo`` (``demo.toml`` shipped with the package)."""
    return load_plan(Path(__file__).with_name("demo.toml"))


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_row_arg(text: str) -> Row:
    """Parse a command-line row: ``solver=dpmpp_2m,steps=8,cache.method=deepcache``.

    Dotted keys fill the dict fields (``cache.interval=3``, ``options.order=3``).
    """
    d: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(
                f"--row {text!r}: {part!r} is not KEY=VALUE; write e.g. --row solver=ddim,steps=8"
            )
        key, value = (s.strip() for s in part.split("=", 1))
        if "." in key:
            head, sub = key.split(".", 1)
            if head not in _ROW_DICT_KEYS:
                raise ConfigError(
                    f"--row {text!r}: dotted key {key!r}; only {', '.join(_ROW_DICT_KEYS)} "
                    "take sub-keys"
                )
            d.setdefault(head, {})[sub] = _scalar(value)
        else:
            d[key] = (
                value
                if key
                in ("name", "solver", "schedule", "peer", "student", "tuned", *COMPRESS_KEYS[1:])
                else (_scalar(value))
            )
    return Row.from_dict(d, f"--row {text!r}")

"""The tuned-configuration file: one JSON document that ``sample``, ``bench``, the Python API and
a diffusers pipeline apply in one line.

A :class:`Candidate` is one point of the search space (solver x steps x schedule x exposure-bias
shift x cache x student, plus open ``extensions`` such as a compression config). The file
written by :func:`save_tuned` holds the chosen candidate under ``"config"``, its explicit
``"sigmas"`` when the schedule was tuned on the fly (so the file doubles as a schedule JSON for
``diffspeed.sample(schedule="tuned.json")``) and the search's report (quality constraint,
tuning and validation values, search cost).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError

#: ``kind`` of a tuned-configuration file (checked on load).
KIND = "diffspeed_tuned"
#: Format version of the file.
FORMAT = 1


@dataclass(frozen=True)
class Candidate:
    """One configuration the tuner can run.

    Attributes:
        solver, steps: the diffspeed sampler (ignored for a student, which has its recipe).
        schedule: a named schedule, or ``"ays"`` / ``"dp"`` for one tuned on the fly (then
            ``sigmas`` holds it).
        sigmas: explicit sigmas (a tuned schedule), trailing zero included.
        time_shift: exposure-bias shift of the network's noise level (0 = off; see
            :func:`diffspeed.solvers.sampling.shifted_time`).
        cache: a cache config dict (``{"method": "deepcache", "interval": 2}``) or None.
        student: a shipped student name or a student ``.safetensors`` path (its own recipe).
        guidance: classifier-free guidance scale the configuration runs at.
        options: extra solver options.
        extensions: configs of dimensions added by other areas (e.g. ``{"compress": {...}}``),
            applied by the hooks registered in :data:`diffspeed.tune.space.EXTENSIONS`.
    """

    solver: str | None = None
    steps: int | None = None
    schedule: str | None = None
    sigmas: tuple[float, ...] | None = None
    time_shift: float = 0.0
    cache: dict[str, Any] | None = None
    student: str | None = None
    guidance: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short readable name (``dpmpp_2m-6-ays``, ``progressive-1``, ``+deepcache-2``)."""
        if self.student:
            head = str(self.student)
        else:
            head = f"{self.solver}-{self.steps}-{self.schedule or 'default'}"
        if self.time_shift:
            head += f"-shift{self.time_shift:g}"
        if self.cache:
            rest = "".join(f"-{v}" for k, v in self.cache.items() if k != "method")
            head += f"+{self.cache.get('method')}{rest}"
        for name, cfg in sorted(self.extensions.items()):
            head += f"+{name}" + (f"-{cfg}" if not isinstance(cfg, dict) else "")
        return head

    @property
    def branch(self) -> tuple:
        """Everything but the step count: candidates of one branch differ only in NFE."""
        return (
            self.solver,
            self.schedule,
            self.time_shift,
            json.dumps(self.cache, sort_keys=True),
            self.student,
            json.dumps(self.extensions, sort_keys=True, default=str),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict without empty fields (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        if self.sigmas is not None:
            d["sigmas"] = list(self.sigmas)
        return {k: v for k, v in d.items() if v not in (None, {}, "") and (k != "time_shift" or v)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        """Build a candidate, naming any unknown key and the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ConfigError(
                f"tuned config has unknown key(s) {unknown}; allowed: {', '.join(allowed)}"
            )
        kw = dict(d)
        if kw.get("sigmas") is not None:
            kw["sigmas"] = tuple(float(s) for s in kw["sigmas"])
        if "guidance" in kw:
            kw["guidance"] = float(kw["guidance"])
        if not kw.get("student") and not kw.get("solver"):
            raise ConfigError("a tuned config needs 'solver' (and 'steps') or 'student'")
        return cls(**kw)


@dataclass(frozen=True)
class TunedConfig:
    """A tuned-configuration file's content: the candidate and what the search found.

    Attributes:
        config: the chosen :class:`Candidate`.
        quality: the constraint, e.g. ``"psnr>=30"``.
        report: tuning / validation values, search cost, model, seeds (free-form, JSON-able).
    """

    config: Candidate
    quality: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        doc: dict[str, Any] = {"kind": KIND, "format": FORMAT, "config": self.config.to_dict()}
        if self.config.sigmas is not None:
            doc["sigmas"] = list(self.config.sigmas)
        doc["quality"] = self.quality
        doc["report"] = self.report
        return doc


def save_tuned(tuned: TunedConfig, path: str | Path) -> Path:
    """Write ``tuned`` to ``path`` (JSON) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tuned.to_json(), indent=2, default=str) + "\n")
    return path


def load_tuned(source: str | Path | Mapping[str, Any] | TunedConfig) -> TunedConfig:
    """Read a tuned-configuration file (or accept its parsed document / a TunedConfig).

    Raises:
        ConfigError: the file is missing, not JSON, or not a diffspeed tuned config.
    """
    if isinstance(source, TunedConfig):
        return source
    if isinstance(source, Mapping):
        doc = dict(source)
    else:
        try:
            doc = json.loads(Path(source).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read tuned config {source}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{source} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ConfigError(
            f"{source if not isinstance(source, Mapping) else 'document'} is not a diffspeed "
            f"tuned config (kind {KIND!r}); write one with `diffspeed tune ... --out tuned.json`"
        )
    if doc.get("format") != FORMAT:
        raise ConfigError(
            f"tuned config format {doc.get('format')!r}; this diffspeed reads {FORMAT}"
        )
    return TunedConfig(
        Candidate.from_dict(doc["config"]), str(doc.get("quality", "")), doc.get("report", {})
    )

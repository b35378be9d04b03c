"""Quality constraints of the tuner: ``psnr=30``, ``rmse=0.05`` or ``fdd-ratio=1.05``.

PSNR and RMSE compare a candidate's samples with the model's own high-accuracy reference
samples from the same noise and condition, so they work on any model with no data. The FDD
ratio is ``distance(candidate samples) / distance(reference samples)`` for a distance to the
data: the Frechet Digits Distance for the embedded digits models, or a function the user
passes (``fdd=lambda x: ...``, e.g. a Frechet distance of their own features).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffspeed.errors import ConfigError

#: Allowed metrics: name -> (higher is better, what it measures).
METRICS = {
    "psnr": (True, "PSNR in dB to the reference samples from the same noise (>= target)"),
    "rmse": (False, "RMSE to the reference samples from the same noise (<= target)"),
    "fdd-ratio": (False, "FDD of the samples / FDD of the reference samples (<= target)"),
}

#: Per rung of the search, how much a candidate may miss the target and still be promoted:
#: dB for PSNR, a relative margin for the others; the last rung and validation use none.
SLACK = {"psnr": (1.0, 0.3, 0.0), "rmse": (0.12, 0.04, 0.0), "fdd-ratio": (0.06, 0.02, 0.0)}


@dataclass(frozen=True)
class Quality:
    """A quality constraint: ``metric`` (a key of :data:`METRICS`) against ``target``."""

    metric: str
    target: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise unknown_metric(self.metric)
        if not math.isfinite(self.target) or (self.metric != "psnr" and self.target <= 0):
            raise ConfigError(f"quality {self.metric}={self.target}: give a positive finite target")

    @property
    def higher_is_better(self) -> bool:
        """Whether larger values of the metric are better."""
        return METRICS[self.metric][0]

    def __str__(self) -> str:
        return f"{self.metric}{'>=' if self.higher_is_better else '<='}{self.target:g}"

    def passes(self, value: float, rung: int | None = None) -> bool:
        """Whether ``value`` meets the target (with the slack of ``rung``; None: none)."""
        slack = 0.0 if rung is None else SLACK[self.metric][min(rung, 2)]
        if math.isnan(value):
            return False
        if self.higher_is_better:
            return value >= self.target - slack
        return value <= self.target * (1 + slack)

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b``."""
        if math.isnan(b):
            return not math.isnan(a)
        return a > b if self.higher_is_better else a < b

    def key(self, value: float) -> float:
        """Sort key, smaller is better (NaN last)."""
        if math.isnan(value):
            return math.inf
        return -value if self.higher_is_better else value


def unknown_metric(name: str) -> ConfigError:
    """The error for an unknown quality metric, listing the allowed ones."""
    allowed = "; ".join(f"{k} ({v[1]})" for k, v in METRICS.items())
    return ConfigError(
        f"unknown quality metric {name!r}; allowed: {allowed}. Example: --quality psnr=30"
    )


def parse_quality(text: str | Quality) -> Quality:
    """Parse ``"psnr=30"``, ``"psnr>=30"``, ``"rmse<=0.05"`` or ``"fdd-ratio=1.05"``."""
    if isinstance(text, Quality):
        return text
    m = re.fullmatch(r"\s*([A-Za-z_-]+)\s*(?:>=|<=|=)\s*([-+0-9.eE]+)\s*", str(text))
    if not m:
        name = re.split(r"[<>=]", str(text), maxsplit=1)[0].strip().lower()
        if name and name not in METRICS:
            raise unknown_metric(name)
        raise ConfigError(f"quality {text!r}: write METRIC=VALUE, e.g. psnr=30 or fdd-ratio=1.05")
    name = m.group(1).lower().replace("_", "-")
    if name not in METRICS:
        raise unknown_metric(name)
    try:
        target = float(m.group(2))
    except ValueError:
        raise ConfigError(f"quality {text!r}: {m.group(2)!r} is not a number") from None
    return Quality(name, target)


def measure(
    quality: Quality,
    x: torch.Tensor,
    ref: torch.Tensor,
    distance: Callable[[torch.Tensor], float] | None = None,
    ref_distance: float | None = None,
) -> float:
    """The value of ``quality.metric`` for samples ``x`` against reference samples ``ref``.

    ``distance`` (and the reference's ``ref_distance``) are needed for ``fdd-ratio``.
    """
    from diffspeed.eval import metrics

    if quality.metric == "psnr":
        return metrics.psnr(x, ref)
    if quality.metric == "rmse":
        return metrics.rmse(x, ref)
    if distance is None:
        raise ConfigError(
            "fdd-ratio needs a distance to the data: the embedded digits models have one; for "
            "your model pass fdd=callable(samples) -> float, or use psnr=/rmse="
        )
    base = ref_distance if ref_distance is not None else float(distance(ref))
    value = float(distance(x.float().cpu()))
    return value / base if base > 0 else math.inf

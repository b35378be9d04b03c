"""The autotuner: the fastest configuration of a model that meets a quality bar.

    result = diffspeed.tune(denoiser, "psnr=30", budget="nfe=10")
    result.save("tuned.json")
    x = diffspeed.apply(denoiser, "tuned.json")(noise, cond)       # or a diffusers pipeline

See :mod:`diffspeed.tune.search` for the search and :mod:`diffspeed.tune.config` for the file.
"""

import sys
import types
from typing import Any

from diffspeed.tune.apply import PipelineHandle, TunedSampler, apply
from diffspeed.tune.config import Candidate, TunedConfig, load_tuned, save_tuned
from diffspeed.tune.quality import METRICS, Quality, parse_quality
from diffspeed.tune.search import Budget, Trial, TuneResult, parse_budget, tune
from diffspeed.tune.space import EXTENSIONS, Extension, SearchSpace, register_extension

__all__ = [
    "EXTENSIONS",
    "METRICS",
    "Budget",
    "Candidate",
    "Extension",
    "PipelineHandle",
    "Quality",
    "SearchSpace",
    "Trial",
    "TuneResult",
    "TunedConfig",
    "TunedSampler",
    "apply",
    "load_tuned",
    "parse_budget",
    "parse_quality",
    "register_extension",
    "save_tuned",
    "tune",
]


class _CallableModule(types.ModuleType):
    """``diffspeed.tune`` is this package and also the verb: ``diffspeed.tune(den, "psnr=30")``
    calls :func:`diffspeed.tune.search.tune` (so importing a submodule never shadows it)."""

    def __call__(self, *args: Any, **kwargs: Any) -> TuneResult:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

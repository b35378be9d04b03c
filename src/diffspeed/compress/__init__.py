"""Compression and compilation: ``quantize``, ``prune`` and ``optimize``, one verb per family.

* :func:`quantize` (``Quantize``): int8 / int4 weights and int8 activations on torchao, with
  fake-quant where a backend cannot run a format; timestep-aware calibration in
  :mod:`diffspeed.compress.calibrate`; quantization-aware fine-tuning in
  :mod:`diffspeed.compress.qat`.
* :func:`prune` (``Prune``): structural channel pruning (:mod:`diffspeed.compress.prune`).
* :func:`optimize` (``Optimize``): ``torch.compile``, half precision, channels-last and the
  attention backend.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffspeed.compress.calibrate import (
    CALIBRATION_SEED_BASE,
    Calibration,
    calibrate,
    calibrate_forward,
    calibration_seeds,
    sensitivity,
)
from diffspeed.compress.optimize import Optimize, optimize
from diffspeed.compress.quantize import BACKENDS, FORMATS, QuantHandle, Quantize, quantize

__all__ = [
    "BACKENDS",
    "CALIBRATION_SEED_BASE",
    "FORMATS",
    "Calibration",
    "Optimize",
    "Prune",
    "QuantHandle",
    "Quantize",
    "calibrate",
    "calibrate_forward",
    "calibration_seeds",
    "optimize",
    "prune",
    "quantize",
    "sensitivity",
]


def __getattr__(name: str) -> Any:
    # pruning lives in its own module, imported on first use; importing it binds the package
    # attribute ``prune`` to the submodule, so the function and config are bound over it
    if name in ("prune", "Prune"):
        module = importlib.import_module("diffspeed.compress.prune")
        globals().update(prune=module.prune, Prune=module.Prune)
        return globals()[name]
    raise AttributeError(f"module 'diffspeed.compress' has no attribute {name!r}")

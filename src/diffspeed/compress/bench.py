"""The bench's ``compress`` rows: a pruned, quantized, cast and/or compiled copy of the model.

A row such as ``{solver = "ddim", steps = 20, quant = {format = "w8a8", act_groups = 4}}``
(or ``--row solver=ddim,steps=20,quant.format=int8_weight,compile=default``) runs on a copy of
the model under test, built in this order: the pruned network (``prune``: a folder with a
diffusers config and safetensors), QAT weights (``quant.weights``), the row's cache, the
quantization (``w8a8`` is calibrated here on the row's own sampler, on calibration seeds),
then ``dtype`` / ``memory_format`` / ``compile``. The cache goes in before compilation so one
compiled graph serves every step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from diffspeed.compress.optimize import Optimize, optimize
from diffspeed.compress.quantize import Quantize, module_bytes, quantize, resolve_network
from diffspeed.errors import ConfigError


def disk_bytes(path: str | Path) -> int:
    """Bytes of the safetensors files in a model folder (or of one file)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files)


def _guided(den: Any, ctx: Any, scale: float) -> Any:
    from diffspeed.core.guidance import guidance

    spec = den.cond_spec
    if not spec.conditional or scale == 1.0:
        return den
    if not spec.guidable:
        return ctx.guided(scale)  # raises the bench's error naming the missing uncond
    return guidance(den, scale)


def build_compressed(row: Any, ctx: Any) -> Any:
    """The generator of a ``compress`` row (see the module docstring)."""
    from diffspeed.bench.methods import SolverGenerator
    from diffspeed.cache import apply_cache, config_from_dict

    den = copy.deepcopy(ctx.denoiser)
    disk = None
    if row.prune is not None:
        from diffspeed.compress.prune import load_pruned

        net = load_pruned(row.prune, device=ctx.device)
        den.net = den.model = net
        disk = disk_bytes(row.prune)
    scale = ctx.scale(row)
    if row.cache:
        apply_cache(den, config_from_dict(dict(row.cache)))
    if row.quant:
        q = dict(row.quant)
        weights = q.pop("weights", None)
        if weights is not None:
            from diffspeed.compress.qat import load_qat_weights

            load_qat_weights(den, weights)
        cfg = Quantize.from_dict(q)
        calibration = None
        if cfg.format == "w8a8":
            if cfg.calibration != "trajectory":
                raise ConfigError(
                    f"row {row.label!r}: bench rows calibrate on the sampler's trajectories "
                    "(quant.calibration = 'trajectory'); the forward-process baseline needs "
                    "data, see benchmarks/compress_cpu.py"
                )
            from diffspeed.compress.calibrate import calibrate

            calibration = calibrate(
                _guided(den, ctx, scale),
                cfg,
                solver=row.solver or "ddim",
                steps=row.steps if row.steps is not None else 50,
                schedule=row.schedule,
                sample_shape=ctx.sample_shape,
                **row.options,
            )
        quantize(den, cfg, calibration=calibration)
    opt = Optimize(
        compile=row.compile or "none",
        dtype=row.dtype or "float32",
        memory_format=row.memory_format or "contiguous",
    )
    optimize(den, opt)
    gen = SolverGenerator(_guided(den, ctx, scale), ctx, row)
    gen.model_size_bytes = module_bytes(resolve_network(den))
    gen.disk_size_bytes = disk if disk is not None else gen.model_size_bytes
    return gen

"""Quantization-aware fine-tuning: fake-quant weights, distilled from the full-precision model.

The student is a copy of the teacher whose linear / convolution weights pass through the
format's quantizer in every forward (straight-through estimator: the forward sees the quantized
weight, the gradient reaches the float weight unchanged; Jacob et al. 2018, Bengio et al. 2013).
Its loss is the distance to the full-precision teacher's denoised output at the same noisy
input (``x0 + sigma * noise``, log-uniform sigmas, condition dropout to the unconditional input
so guidance keeps working), trained by the shared loop of :mod:`diffspeed.distill.trainer`.
Afterwards :func:`quantize` with the same format and group size turns the fine-tuned float
weights into exactly the codes the forward saw.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from diffspeed.compress.quantize import (
    Quantize,
    kept,
    quantizable_layers,
    resolve_network,
    weight_scale,
)
from diffspeed.configs import JsonConfig
from diffspeed.errors import ConfigError

#: Weight formats QAT trains for.
QAT_FORMATS = ("int8_weight", "int4_weight")


@dataclasses.dataclass(frozen=True)
class QAT(JsonConfig):
    """A quantization-aware fine-tune (a small frozen dataclass that round-trips JSON).

    Attributes:
        format: the weight format trained for (:data:`QAT_FORMATS`).
        group_size: input channels per int4 scale (as :class:`Quantize`).
        steps, batch_size, lr: the shared loop's optimizer steps, batch and learning rate.
        cond_dropout: fraction of rows trained on the unconditional input.
        seed: seed of every step's randomness.
        keep: layers (names or prefixes) left in full precision, in training and after.
    """

    config_name: ClassVar[str] = "QAT config"

    format: str = "int4_weight"
    group_size: int = 32
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-5
    cond_dropout: float = 0.15
    seed: int = 0
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.format not in QAT_FORMATS:
            raise ConfigError(
                f"QAT trains weight formats only; supported: {', '.join(QAT_FORMATS)}, "
                f"got {self.format!r}"
            )
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"cond_dropout must lie in [0, 1), got {self.cond_dropout}")

    @property
    def quantize_config(self) -> Quantize:
        """The :class:`Quantize` recipe the fine-tuned weights are meant for."""
        return Quantize(format=self.format, group_size=self.group_size, keep=self.keep)


class STEQuant(nn.Module):
    """Parametrization ``w -> w + (q(w) - w).detach()``: the forward sees the symmetric
    integer-quantized weight, the backward passes the gradient straight through."""

    def __init__(self, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = weight_scale(w, self.bits, self.group_size).to(w.dtype)
        flat = w.reshape(w.shape[0], -1)
        view = flat if self.group_size is None else flat.reshape(*scale.shape[:2], -1)
        q = 2 ** (self.bits - 1)
        deq = torch.clamp(torch.round(view / scale), -q, q - 1) * scale
        return w + (deq.reshape(w.shape) - w).detach()


def add_fake_quant(net: nn.Module, config: QAT) -> list[nn.Module]:
    """Put :class:`STEQuant` on every linear / conv weight of ``net``; return the layers."""
    bits, gs = (4, config.group_size) if config.format == "int4_weight" else (8, None)
    layers = [m for n, m in quantizable_layers(net) if not kept(n, config.keep)]
    for mod in layers:
        parametrize.register_parametrization(mod, "weight", STEQuant(bits, gs))
    return layers


def strip_fake_quant(layers: list[nn.Module]) -> None:
    """Remove the :class:`STEQuant` parametrizations, keeping the trained float weights."""
    for mod in layers:
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)


class QATLoss:
    """Per-sample ``||D_student(x) - D_teacher(x)||^2`` at ``x = x0 + sigma * noise``."""

    def __init__(self, config: QAT, spec: Any) -> None:
        self.config, self.spec = config, spec

    def __call__(self, student: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        from diffspeed.distill.finetune import drop_cond

        lo, hi = math.log(teacher.sigma_min), math.log(teacher.sigma_max)
        sigma = torch.exp(lo + (hi - lo) * ctx.rand()).to(x0.dtype)
        x = x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * ctx.randn(*x0.shape[1:])
        if cond and self.config.cond_dropout > 0:
            cond = drop_cond(self.spec, cond, ctx.rand() < self.config.cond_dropout)
        with torch.no_grad():
            target = teacher(x, sigma, **cond)
        pred = student(x, sigma, **cond)
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def qat(
    teacher: Any,
    config: QAT,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    out_dir: str | Path,
    *,
    progress: bool = False,
) -> Any:
    """Quantization-aware fine-tune of a copy of ``teacher``; return the student denoiser.

    Args:
        teacher: the full-precision (unguided) denoiser; it is not changed.
        config: the :class:`QAT` recipe.
        x0: training data ``[N, C, H, W]``; ``cond`` its conditions (``{key: [N, ...]}``).
        out_dir: run directory of the shared loop (checkpoint, logs) and of the result:
            ``student.safetensors`` (the fine-tuned float weights of the network) and
            ``qat.json`` (this config).

    Returns:
        The student denoiser with fine-tuned float weights (call
        ``quantize(student, config.quantize_config)`` to quantize it).
    """
    from diffspeed.distill.trainer import TrainConfig, TrainData, train
    from diffspeed.models.io import atomic_write_json, save_weights

    out = Path(out_dir)
    student = copy.deepcopy(teacher)
    net = resolve_network(student)
    net.requires_grad_(True).train()
    layers = add_fake_quant(net, config)
    tcfg = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        checkpoint_every=0,
        log_every=50,
    )
    train(
        student,
        QATLoss(config, teacher.cond_spec),
        tcfg,
        out,
        data=TrainData(x0, dict(cond or {})),
        teacher=teacher,
        run_info={"qat": config.to_dict()},
        progress=progress,
    )
    strip_fake_quant(layers)
    net.requires_grad_(False).eval()
    save_weights(out / "student.safetensors", dict(net.state_dict()))
    atomic_write_json(out / "qat.json", {"qat": config.to_dict()})
    return student


def load_qat_weights(denoiser: Any, path: str | Path) -> Any:
    """Load QAT-fine-tuned network weights (``student.safetensors``) into ``denoiser``'s
    network in place; return ``denoiser``."""
    from diffspeed.models.io import load_state_into, load_weights

    path = Path(path)
    if path.is_dir():
        path = path / "student.safetensors"
    load_state_into(resolve_network(denoiser), load_weights(path), str(path))
    return denoiser


def qat_config_of(path: str | Path) -> QAT:
    """The :class:`QAT` config saved beside fine-tuned weights (``qat.json``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return QAT.from_dict(json.loads((folder / "qat.json").read_text())["qat"])

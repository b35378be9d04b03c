"""A 'second model' for LCM-LoRA: the teacher briefly fine-tuned on a style of the digits.

LCM-LoRA's claim (Luo et al. 2023b) is that an adapter distilled on a base model accelerates
other fine-tunes of that base without further training. The styles (italic, thick) live with
the embedded model in :mod:`diffspeed.models.styles`.

The fine-tune is plain denoising training (eps-MSE, condition dropout to the model's
unconditional input, for guidance) started from the teacher's weights, written in the
teacher's format so ``load_teacher(path)`` and ``reference_set(teacher_path=path)`` load it.
Its FDD is measured against the *style's* data (``models.styles.style_features``), not the
original digits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffspeed.core.contract import CondSpec
from diffspeed.errors import ConfigError, unknown_name
from diffspeed.models.styles import STYLES


def finetune_style(path: str | Path) -> str:
    """The style a model written by :func:`finetune_teacher` was fine-tuned on (read from the
    JSON beside its weights); a :class:`~diffspeed.errors.WeightsError` for any other model."""
    from diffspeed.errors import WeightsError
    from diffspeed.models.io import read_model_config

    cfg_path = Path(path).with_suffix(".json")
    try:
        cfg = read_model_config(path, "style fine-tune")
    except WeightsError:
        cfg = {}
    if not isinstance(cfg, dict) or "finetune" not in cfg:
        raise WeightsError(
            f"{path} is not a style fine-tune (no 'finetune' entry in {cfg_path}); make one with "
            "`diffspeed distill finetune`"
        )
    return str(cfg["finetune"]["style"])


def drop_cond(spec: CondSpec, cond: Mapping[str, Any], drop: torch.Tensor) -> dict[str, Any]:
    """``cond`` with the rows where ``drop [B]`` is true replaced by the spec's unconditional
    input (label dropout for classifier-free guidance; Ho & Salimans 2022, sec. 3.2)."""
    uncond = spec.unconditional(len(drop), like=drop)
    out = dict(cond)
    for key, u in uncond.items():
        c = out[key]
        dim = spec.batch_dim(key)
        mask = drop.view([-1 if i == dim else 1 for i in range(c.ndim)])
        out[key] = torch.where(mask, u.to(c.dtype), c)
    return out


@dataclass(frozen=True)
class FineTune:
    """Fine-tuning settings (eps-MSE denoising loss from the teacher's weights).

    Attributes:
        style: the data style (:data:`STYLES`).
        steps, batch_size, lr: optimisation (AdamW, cosine decay, EMA 0.99 exported).
        label_dropout: fraction of labels replaced by the null class (keeps CFG working).
        seed: seed of the training loop.
    """

    style: str = "italic"
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-4
    label_dropout: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise unknown_name("fine-tune style", self.style, STYLES)
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("FineTune needs steps >= 1, batch_size >= 1 and lr > 0")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError("label_dropout must be in [0, 1)")


class DenoisingLoss:
    """The DDPM loss ``||eps_theta(x_t, t, c) - eps||^2`` (Ho et al. 2020, eq. 14) on a
    diffusers UNet, with condition dropout (a fraction ``dropout`` of the rows) to ``spec``'s
    unconditional input; per sample, for ``distill.train``."""

    def __init__(self, dropout: float, alphas_cumprod: torch.Tensor, spec: CondSpec) -> None:
        self.dropout = dropout
        self.ac = alphas_cumprod.float()
        self.spec = spec

    def __call__(self, net: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        ac = self.ac.to(x0.device)
        t = ctx.randint(0, ac.numel())
        eps = ctx.randn(*x0.shape[1:])
        drop = ctx.rand() < self.dropout
        a = ac[t].view(-1, *([1] * (x0.ndim - 1)))
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # forward process q(x_t | x0)
        out = net(xt, t, **drop_cond(self.spec, cond, drop)).sample
        return (out - eps).pow(2).flatten(1).mean(1)


def finetune_teacher(
    out: str | Path,
    config: FineTune = FineTune(),
    *,
    teacher_path: str | Path | None = None,
    progress: bool = False,
    ship: str | None = None,
) -> Path:
    """Fine-tune the teacher on ``config.style``; writes ``out`` (+ ``.json``, teacher format).

    The run directory (checkpoints, logs) is ``<out>.run/``; an interrupted run resumes and a
    finished one is not retrained. ``ship``: also store the model with int8 weights as
    ``models/assets/students/<ship>.safetensors`` (how the shipped second model is made).
    """
    from diffspeed.distill.trainer import TrainConfig, TrainData, train
    from diffspeed.models.io import save_model
    from diffspeed.models.styles import style_set
    from diffspeed.models.teacher import load_teacher, teacher_config

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must be a .safetensors path, got {out}")
    teacher = load_teacher(teacher_path)
    net = copy.deepcopy(teacher.model).requires_grad_(True)
    x0, cond = style_set(config.style)
    loss = DenoisingLoss(config.label_dropout, teacher.alphas_cumprod, teacher.cond_spec)
    result = train(
        net,
        loss,
        TrainConfig(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup=min(50, config.steps // 10),
            ema_decay=0.99,
            seed=config.seed,
        ),
        out.with_suffix(".run"),
        data=TrainData(x0, cond),
        progress=progress,
    )
    from diffspeed.distill.students import STUDENTS_DIR

    arch = teacher_config()  # the weights' hash covers the architecture only
    cfg = {**arch, "finetune": asdict(config)}
    targets = [(out, False)] + ([(STUDENTS_DIR / f"{ship}.safetensors", True)] if ship else [])
    for path, int8 in targets:
        save_model(path, result.best.state_dict(), cfg, arch, int8=int8)
    return out

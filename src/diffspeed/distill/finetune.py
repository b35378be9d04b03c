"""A 'second model' for LCM-LoRA: the teacher briefly fine-tuned on a style of the digits.

LCM-LoRA's claim (Luo et al. 2023b) is that an adapter distilled on a base model accelerates
other fine-tunes of that base without further training. Two styles of the digits:

* ``"italic"``: slanted strokes (rows 0-1 shifted one pixel right, rows 6-7 one pixel left).
  The digits classifier still reads 90.6 % of the real italic digits, so class accuracy stays
  meaningful, and their FDD to the plain digits is 15.6: a real change of distribution.
* ``"thick"``: every digit dilated with a 3x3 max filter. The classifier reads only 21 % of
  these, so a thick model's class accuracy says little.

The fine-tune is plain denoising
training (eps-MSE, label dropout for guidance) started from the teacher's weights, written in
the teacher's format so ``load_teacher(path)`` and ``reference_set(teacher_path=path)`` load it.
Its FDD is measured against the *style's* data (:func:`style_features`), not the original
digits.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffspeed.errors import ConfigError, unknown_name

#: Styles a fine-tune can be trained on.
STYLES = ("italic", "thick")


def shift_columns(x: torch.Tensor, shift: int) -> torch.Tensor:
    """``x [..., W]`` moved ``shift`` pixels right (left if negative); background (-1) fills."""
    if shift == 0:
        return x
    pad = (shift, 0) if shift > 0 else (0, -shift)
    padded = F.pad(x, pad, value=-1.0)
    return padded[..., :-shift] if shift > 0 else padded[..., -shift:]


def style_data(style: str = "italic") -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits in ``style`` (``[N, 1, 8, 8]`` in [-1, 1]) and their labels."""
    from diffspeed.models.digits import load_digits

    if style not in STYLES:
        raise unknown_name("fine-tune style", style, STYLES)
    x, y = load_digits("all")
    if style == "thick":
        return F.max_pool2d(x, 3, stride=1, padding=1), y  # 3x3 max filter: dilated strokes
    rows = [shift_columns(x[:, :, i], 1 if i < 2 else -1 if i > 5 else 0) for i in range(8)]
    return torch.stack(rows, dim=2), y  # slanted: top right, bottom left


def training_data(spec: str = "digits") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels for a training command's ``--data``: ``"digits"`` (the real digits),
    a style name (:data:`STYLES`), or several joined by commas (``"digits,thick"``: both sets
    concatenated)."""
    from diffspeed.models.digits import load_digits

    parts = []
    for name in spec.split(","):
        if name == "digits":
            parts.append(load_digits("all"))
        elif name in STYLES:
            parts.append(style_data(name))
        else:
            raise unknown_name("training data", name, ("digits", *STYLES))
    x, y = zip(*parts, strict=True)
    return torch.cat(x), torch.cat(y)


def finetune_style(path: str | Path) -> str:
    """The style a model written by :func:`finetune_teacher` was fine-tuned on (read from the
    JSON beside its weights); a :class:`~diffspeed.errors.WeightsError` for any other model."""
    import json

    from diffspeed.errors import WeightsError

    cfg_path = Path(path).with_suffix(".json")
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if "finetune" not in cfg:
        raise WeightsError(
            f"{path} is not a style fine-tune (no 'finetune' entry in {cfg_path}); make one with "
            "`diffspeed consistency finetune`"
        )
    return str(cfg["finetune"]["style"])


@lru_cache(maxsize=2)
def style_features(style: str = "italic") -> np.ndarray:
    """Classifier features of the style's data: the FDD reference of a fine-tuned model."""
    from diffspeed.eval.metrics import features

    return features(style_data(style)[0])


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
    """The DDPM loss ``||eps_theta(x_t, t, y) - eps||^2`` (Ho et al. 2020, eq. 14) on a
    diffusers UNet, with label dropout; per sample, for ``distill.train``."""

    def __init__(self, config: FineTune, alphas_cumprod: torch.Tensor, null_label: int) -> None:
        self.config = config
        self.ac = alphas_cumprod.float()
        self.null_label = null_label

    def __call__(self, net: Any, teacher: Any, x0: torch.Tensor, cond: dict, ctx: Any):
        ac = self.ac.to(x0.device)
        t = ctx.randint(0, ac.numel())
        eps = ctx.randn(*x0.shape[1:])
        drop = ctx.rand() < self.config.label_dropout
        y = torch.where(
            drop, torch.full_like(cond["class_labels"], self.null_label), cond["class_labels"]
        )
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # forward process q(x_t | x0)
        return (net(xt, t, class_labels=y).sample - eps).pow(2).flatten(1).mean(1)


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
    from diffspeed.models.io import atomic_write_json, save_weights
    from diffspeed.models.teacher import NULL_LABEL, load_teacher, teacher_config

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must be a .safetensors path, got {out}")
    teacher = load_teacher(teacher_path)
    net = copy.deepcopy(teacher.model).requires_grad_(True)
    x0, y = style_data(config.style)
    loss = DenoisingLoss(config, teacher.alphas_cumprod, getattr(teacher, "null_label", NULL_LABEL))
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
        data=TrainData(x0, {"class_labels": y}),
        progress=progress,
    )
    from diffspeed.distill.students import STUDENTS_DIR

    arch = teacher_config()  # the weights' hash covers the architecture only
    cfg = {**arch, "finetune": asdict(config)}
    targets = [(out, False)] + ([(STUDENTS_DIR / f"{ship}.safetensors", True)] if ship else [])
    for path, int8 in targets:
        save_weights(path, result.best.state_dict(), arch, int8=int8)
        atomic_write_json(path.with_suffix(".json"), cfg)
    return out

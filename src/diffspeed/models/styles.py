"""Styled variants of the digits (the data of the LCM-LoRA 'second model') and training sets.

Two styles of the digits:

* ``"italic"``: slanted strokes (rows 0-1 shifted one pixel right, rows 6-7 one pixel left).
  The digits classifier still reads 90.6 % of the real italic digits, so class accuracy stays
  meaningful, and their FDD to the plain digits is 15.6: a real change of distribution.
* ``"thick"``: every digit dilated with a 3x3 max filter. The classifier reads only 21 % of
  these, so a thick model's class accuracy says little.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from diffspeed.errors import unknown_name

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


def training_set(spec: str = "digits") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`training_data` as ``(x0, cond)``: the teacher's conditioning of each image."""
    x, y = training_data(spec)
    return x, {"class_labels": y}


def style_set(style: str = "italic") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`style_data` as ``(x0, cond)``: the teacher's conditioning of each image."""
    x, y = style_data(style)
    return x, {"class_labels": y}


@lru_cache(maxsize=2)
def style_features(style: str = "italic") -> np.ndarray:
    """Classifier features of the style's data: the FDD reference of a fine-tuned model."""
    from diffspeed.eval.metrics import features

    return features(style_data(style)[0])


def digit_scores(x: torch.Tensor, cond: dict[str, torch.Tensor]) -> dict[str, float]:
    """FDD and class accuracy of generated digits ``x`` sampled for ``cond`` (periodic eval)."""
    from diffspeed.eval.metrics import class_accuracy, fdd

    return {"fdd": fdd(x), "accuracy": class_accuracy(x, cond["class_labels"])}

"""How a bench scores an embedded model's samples: the digits metrics and when they apply.

The bench asks :func:`scoring_for` with the model's conditioning spec; a model that draws
8x8 digits for the ten digit labels is scored with FDD, KID and class accuracy (the digits
classifier of :mod:`diffspeed.models.classifier`); any other model gets no domain metrics
(only fidelity to its own reference samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diffspeed.core.contract import CondSpec
from diffspeed.models.digits import IMAGE_SHAPE, NUM_CLASSES


@dataclass(frozen=True)
class ModelScoring:
    """Domain metrics of an embedded model's samples.

    Attributes:
        name: what the metrics measure against (shown in reports).
        score: ``score(samples, cond) -> {"fdd", "kid", "accuracy"}`` for samples
            ``[N, C, H, W]`` drawn for the conditions ``cond`` (one per sample).
    """

    name: str
    score: Callable[[torch.Tensor, Mapping[str, Any]], dict[str, float]]


def _digits_score(x: torch.Tensor, cond: Mapping[str, Any]) -> dict[str, float]:
    from diffspeed.eval import metrics
    from diffspeed.models.teacher import cond_labels

    return {
        "fdd": metrics.fdd(x),
        "kid": metrics.kid_score(x),
        "accuracy": metrics.class_accuracy(x, cond_labels(cond)),
    }


#: The digits metrics: FDD and KID against the real digits, accuracy of the digits classifier.
DIGITS = ModelScoring("digits", _digits_score)


def _draws_digits(spec: CondSpec) -> bool:
    from diffspeed.models.teacher import cond_labels, digits_cond_spec

    digits = digits_cond_spec()
    if spec.sample_shape is None or tuple(spec.sample_shape) != IMAGE_SHAPE:
        return False
    if spec.keys != digits.keys or spec.examples is None:
        return False
    labels = cond_labels(spec.example_cond(NUM_CLASSES))
    return torch.equal(labels.cpu(), torch.arange(NUM_CLASSES))


def scoring_for(spec: CondSpec) -> ModelScoring | None:
    """The domain metrics for a model with conditioning ``spec`` (None: no metrics apply).

    Digits metrics apply to a model whose samples are 8x8 digit images and whose example
    conditions are the ten digit labels in turn (the embedded teacher, its fine-tunes and
    students, or a diffusers UNet of the same kind).
    """
    return DIGITS if _draws_digits(spec) else None

"""How a pipeline bench prompts and scores an embedded text-to-image model (mini-sd).

The bench asks :func:`pipeline_scoring_for` with a pipeline folder. A mini-sd folder (the
shipped one, or any folder written by ``diffspeed train-mini-sd``) is prompted with "a
handwritten <digit word>" for digit ``i % 10`` of sample ``i`` and scored with FDD and class
accuracy of its images pooled to 8x8 (:func:`diffspeed.models.minisd.quality.score`); any other
pipeline gets no prompts or domain metrics from here (the bench then needs the user's prompts
and reports fidelity to its own reference only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from diffspeed.models.digits import NUM_CLASSES


@dataclass(frozen=True)
class PipelineScoring:
    """Example prompts and domain metrics of an embedded text-to-image model.

    Attributes:
        name: the model's name (shown in reports).
        prompts: ``prompts(n)`` -> the prompts of samples ``0 .. n-1``.
        score: ``score(images)`` -> ``{"fdd", "accuracy"}`` for images ``[N, C, H, W]`` in
            [-1, 1] drawn for ``prompts(N)``.
    """

    name: str
    prompts: Callable[[int], list[str]]
    score: Callable[[torch.Tensor], dict[str, float]]


def _digits(n: int) -> list[int]:
    return [i % NUM_CLASSES for i in range(n)]


def _mini_sd_prompts(n: int) -> list[str]:
    from diffspeed.models.minisd.quality import prompts_for

    return prompts_for(_digits(n))


def _mini_sd_score(images: torch.Tensor) -> dict[str, float]:
    from diffspeed.models.minisd.quality import Samples, score

    got = score(Samples(images, torch.tensor(_digits(len(images)))))
    return {"fdd": got["fdd"], "accuracy": got["accuracy"]}


#: mini-sd's prompts ("a handwritten <word>", digit = sample index mod 10) and metrics.
MINI_SD = PipelineScoring("mini-sd", _mini_sd_prompts, _mini_sd_score)


def is_mini_sd(folder: str | Path) -> bool:
    """Whether ``folder`` is mini-sd: the shipped folder, or one written by ``train-mini-sd``
    (its ``training.json`` holds exactly mini-sd's training settings)."""
    from diffspeed.models.minisd.quality import mini_sd_path
    from diffspeed.models.minisd.train import MiniSDTraining

    folder = Path(folder)
    if folder.resolve() == mini_sd_path().resolve():
        return True
    try:
        saved = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and set(saved) == {f.name for f in fields(MiniSDTraining)}


def pipeline_scoring_for(folder: str | Path) -> PipelineScoring | None:
    """The prompts and metrics for the pipeline in ``folder`` (None: not an embedded model)."""
    return MINI_SD if is_mini_sd(folder) else None

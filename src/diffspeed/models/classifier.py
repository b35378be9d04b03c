"""The metric network: a small CNN digits classifier.

Its 128-d penultimate features define the Frechet Digits Distance (FDD) and KID; its
predictions give the class accuracy of conditional samples. ``diffspeed train-classifier``
re-creates the shipped weights (train split only; accuracy reported on the held-out split).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from diffspeed.errors import WeightsError
from diffspeed.models.io import atomic_write_json, load_state_into, load_weights, save_weights

ASSETS = Path(__file__).parent / "assets"
FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """conv(32) -> conv(64) -> pool -> conv(64) -> pool -> fc(128) [features] -> fc(10)."""

    def __init__(self, width: int = 32, features: int = FEATURE_DIM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4, features),
            nn.SiLU(),
        )
        self.head = nn.Linear(features, 10)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, 128]`` of images ``[B, 1, 8, 8]`` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 10]``."""
        return self.head(self.dropout(self.features(x)))


@dataclass(frozen=True)
class ClassifierTraining:
    """Settings of ``diffspeed train-classifier``."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1
    seed: int = 0


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (background -1 fills the border)."""
    if max_shift == 0:
        return x
    pad = torch.nn.functional.pad(x, [max_shift] * 4, value=-1.0)
    out = torch.empty_like(x)
    offs = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen)
    for i, (dy, dx) in enumerate(offs.tolist()):
        out[i] = pad[i, :, dy : dy + 8, dx : dx + 8]
    return out


def held_out_accuracy(model: DigitsClassifier) -> float:
    """Accuracy of ``model`` on the held-out 30 % split."""
    from diffspeed.models.digits import load_digits

    x, y = load_digits("test")
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def train_classifier(out: str | Path, cfg: ClassifierTraining = ClassifierTraining()) -> float:
    """Train on the train split, save to ``out`` (+ ``.json``); return held-out accuracy."""
    from diffspeed.models.digits import load_digits

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = load_digits("train")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.lr, total_steps=cfg.epochs * ((len(y) + cfg.batch_size - 1) // cfg.batch_size)
    )
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            logits = model(_shift(x[b], gen, cfg.max_shift))
            loss = nn.functional.cross_entropy(logits, y[b], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    acc = held_out_accuracy(model)
    config = {"width": 32, "features": FEATURE_DIM, "training": asdict(cfg), "held_out_acc": acc}
    out = Path(out)
    save_weights(out, model.state_dict(), {"width": 32, "features": FEATURE_DIM})
    atomic_write_json(out.with_suffix(".json"), config)
    return acc


def load_classifier(
    path: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The shipped digits classifier (eval mode, frozen)."""
    path = Path(path) if path is not None else ASSETS / "classifier.safetensors"
    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise WeightsError(f"{cfg_path} is missing; a classifier needs its JSON config beside it")
    cfg = json.loads(cfg_path.read_text())
    arch = {"width": cfg["width"], "features": cfg["features"]}
    model = DigitsClassifier(**arch)
    load_state_into(model, load_weights(path, arch), str(path))
    return model.eval().requires_grad_(False).to(device)

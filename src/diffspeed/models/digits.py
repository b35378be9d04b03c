"""scikit-learn's bundled 8x8 handwritten digits, scaled to [-1, 1] (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

#: Shape ``(C, H, W)`` of one digit image.
IMAGE_SHAPE = (1, 8, 8)
#: Number of digit classes (labels ``0 .. 9``).
NUM_CLASSES = 10

#: Fixed seed of the stratified train / held-out split used by the classifier and FDD floor.
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.3


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = d.images.astype(np.float32) / 8.0 - 1.0
    return x[:, None], d.target.astype(np.int64)


def load_digits(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Digits images ``[N, 1, 8, 8]`` in [-1, 1] and labels ``[N]``.

    Args:
        split: ``"all"`` (1797 images), ``"train"`` (70 %) or ``"test"`` (30 %, held out; a
            fixed stratified split with seed :data:`SPLIT_SEED`).
    """
    from diffspeed.errors import unknown_name

    x, y = _raw()
    if split == "all":
        idx = np.arange(len(y))
    elif split in ("train", "test"):
        from sklearn.model_selection import train_test_split

        tr, te = train_test_split(
            np.arange(len(y)), test_size=HELD_OUT_FRACTION, stratify=y, random_state=SPLIT_SEED
        )
        idx = np.sort(tr if split == "train" else te)
    else:
        raise unknown_name("digits split", split, ("all", "train", "test"))
    return torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy())


def real_halves() -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint class-stratified halves of all digits (for the real-vs-real FDD floor)."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits("all")
    a, b = train_test_split(
        np.arange(len(y)), test_size=0.5, stratify=y.numpy(), random_state=SPLIT_SEED
    )
    return x[np.sort(a)], x[np.sort(b)]

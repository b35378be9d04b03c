"""Image grids of 8x8 digits as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffspeed.atomic import atomic_write, image_target
from diffspeed.errors import ShapeError


def to_grid(images: torch.Tensor, nrow: int = 10, pad: int = 1) -> np.ndarray:
    """Tile ``[N, 1, H, W]`` images in [-1, 1] into one ``[rows*(H+pad), nrow*(W+pad)]`` array
    in [0, 1] (padding is mid-grey)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ShapeError(f"expected [N, 1, H, W] images, got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()[:, 0]
    n, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = x[i]
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int = 10,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    scale: float = 0.28,
) -> Path:
    """Save an image grid (atomically); optional title and one label per row (left margin).

    ``path`` is a file whose suffix names the format (``.png``, ``.pdf``, ...), or an existing
    folder (the grid goes to ``grid.png`` inside it). Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = to_grid(images, nrow)
    rows = (images.shape[0] + nrow - 1) // nrow
    left = 1.6 if row_labels else 0.1
    fig_w = nrow * scale * 1.1 + left
    fig, ax = plt.subplots(figsize=(fig_w, rows * scale * 1.1 + (0.4 if title else 0.1)))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels:
        cell = grid.shape[0] / rows
        ax.set_yticks([cell * (i + 0.5) for i in range(len(row_labels))], list(row_labels))
        ax.tick_params(axis="y", length=0, labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    path = image_target(path, "grid.png")
    try:
        atomic_write(
            path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], dpi=110, bbox_inches="tight")
        )
    finally:
        plt.close(fig)
    return path

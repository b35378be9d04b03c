"""Quality metrics: FDD (our FID), KID, class accuracy, and fidelity (PSNR / RMSE).

FDD is the Frechet distance (Heusel et al. 2017, eq. 6) between Gaussians fitted to the
digits classifier's 128-d penultimate features; KID is the unbiased MMD^2 with the cubic
polynomial kernel (Binkowski et al. 2018), averaged over subsets.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import linalg

from diffspeed.errors import ShapeError
from diffspeed.models.digits import IMAGE_SHAPE

#: Images are clamped to the data range before any metric sees them.
DATA_RANGE = (-1.0, 1.0)


def _check_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ShapeError(
            f"{name} must be a [N, {', '.join(map(str, IMAGE_SHAPE))}] tensor (digits in "
            f"[-1, 1]), got {tuple(getattr(x, 'shape', ()))}"
        )
    return x.detach().float().cpu().clamp(*DATA_RANGE)


@lru_cache(maxsize=2)
def _classifier():
    from diffspeed.models.classifier import load_classifier

    return load_classifier()


def features(images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Classifier penultimate features ``[N, 128]`` (float64) of ``[N, C, H, W]`` digits."""
    x = _check_images(images)
    net = _classifier()
    with torch.inference_mode():
        parts = [net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()


def predict(images: torch.Tensor) -> torch.Tensor:
    """Predicted class ``[N]`` of each image."""
    x = _check_images(images)
    with torch.inference_mode():
        return _classifier()(x).argmax(1)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two ``[N, D]`` feature sets."""
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ShapeError("the Frechet distance needs at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    # tr sqrt(C1 C2) = tr sqrt(S C2 S) with S = C1^(1/2): symmetric PSD, so eigh is stable
    w, v = linalg.eigh(c1)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(s1 @ c2 @ s1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_covmean)


def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = 20, subset_size: int = 200) -> float:
    """Unbiased KID (x1000 is common; this returns the raw MMD^2) over random subsets."""
    n = min(len(f1), len(f2), subset_size)
    if n < 2:
        raise ShapeError("KID needs at least 2 samples per set")
    d = f1.shape[1]
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(subsets):
        a = f1[rng.choice(len(f1), n, replace=False)]
        b = f2[rng.choice(len(f2), n, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        m = n
        vals.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(np.mean(vals))


@lru_cache(maxsize=1)
def real_features() -> np.ndarray:
    """Features of all 1797 real digits (the FDD reference statistics)."""
    from diffspeed.models.digits import load_digits

    return features(load_digits("all")[0])


def fdd(images: torch.Tensor, reference: np.ndarray | None = None) -> float:
    """Frechet Digits Distance of ``images`` to the real digits (or to ``reference`` features)."""
    return frechet_distance(features(images), real_features() if reference is None else reference)


def kid_score(images: torch.Tensor, reference: np.ndarray | None = None) -> float:
    """KID of ``images`` to the real digits (or to ``reference`` features)."""
    return kid(features(images), real_features() if reference is None else reference)


def class_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to the label they were generated for."""
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (images.shape[0],):
        raise ShapeError(f"labels must be [N]={images.shape[0]}, got {tuple(labels.shape)}")
    return float((predict(images) == labels).float().mean())


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square error between two image sets of equal shape (no clamping)."""
    if x.shape != ref.shape:
        raise ShapeError(f"shape {tuple(x.shape)} does not match reference {tuple(ref.shape)}")
    return float((x.double().cpu() - ref.double().cpu()).pow(2).mean().sqrt())


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB for data in [-1, 1] (peak-to-peak 2), after clamping both to the data range."""
    if x.shape != ref.shape:
        raise ShapeError(f"shape {tuple(x.shape)} does not match reference {tuple(ref.shape)}")
    a = x.double().cpu().clamp(*DATA_RANGE)
    b = ref.double().cpu().clamp(*DATA_RANGE)
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))

"""Bootstrap confidence intervals over images for mIoU and per-class IoU.

Rare classes live in one or two validation images, so a per-class IoU can move
a lot with which images happen to be held out. The unit resampled is the image
(pixels of one image are not independent): draw N images with replacement,
sum their confusion matrices, recompute IoU and mIoU under poc59's convention,
repeat; the interval is the central `level` percentile range of the resamples.

Vectorised: a resample is a vector of draw counts per image, so R resamples
are one [R, N] x [N, C*C] matrix product.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from poc59.analysis.scores import batched_iou, batched_miou
from poc59.core.progress import Steps

__all__ = ["bootstrap_iou"]

log = logging.getLogger(__name__)
_CHUNK = 256  # resamples per matrix product (bounds memory for large N)


def _counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """[resamples, n] float64: how often each image is drawn in each resample (rows sum to n)."""
    draws = rng.integers(0, n, size=(resamples, n))
    flat = draws + np.arange(resamples)[:, None] * n
    return np.bincount(flat.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _interval(values: np.ndarray, level: float) -> np.ndarray:
    """[..., 2] percentile interval over axis 0, ignoring NaN (a class absent from a resample); NaN if all NaN."""
    tail = 100 * (1 - level) / 2
    cols = values.reshape(len(values), -1)
    out = np.full((cols.shape[1], 2), np.nan)
    ok = ~np.isnan(cols).all(axis=0)
    if ok.any():
        out[ok] = np.nanpercentile(cols[:, ok], [tail, 100 - tail], axis=0).T
    return out.reshape(*values.shape[1:], 2)


def bootstrap_iou(
    per_image: Tensor | np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile intervals from per-image confusion matrices [N, C, C] (rows target, cols prediction).

    Returns {"miou": array [2] (NaN if undefined), "per_class_iou": array [C, 2] (NaN where the class is
    absent from every resample), "resamples", "seed", "level", "unit": "image"}. Same inputs and seed,
    same intervals.
    """
    cms = torch.as_tensor(per_image).detach().to(device="cpu", dtype=torch.float64).numpy()
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2]:
        raise ValueError(f"per-image confusion matrices must be [N, C, C], got shape {cms.shape}")
    n, c = cms.shape[0], cms.shape[1]
    if n < 1:
        raise ValueError("bootstrap needs at least one image")
    if int(resamples) < 1:
        raise ValueError(f"bootstrap.resamples must be >= 1, got {resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"bootstrap.level must be between 0 and 1 (e.g. 0.95), got {level}")

    rng = np.random.default_rng(seed)
    flat = cms.reshape(n, c * c)
    iou, miou = [], []
    with Steps(log, "bootstrap", int(resamples), "resamples") as steps:
        for start in range(0, int(resamples), _CHUNK):
            counts = _counts(rng, min(_CHUNK, int(resamples) - start), n)
            resampled = torch.from_numpy(counts @ flat).view(-1, c, c)
            iou.append(batched_iou(resampled).numpy())  # [r, C], NaN = absent from that resample
            miou.append(batched_miou(resampled).numpy())
            steps.advance(n=len(counts))
    iou, miou = np.concatenate(iou), np.concatenate(miou)
    return {
        "miou": _interval(miou, level),
        "per_class_iou": _interval(iou, level),
        "resamples": int(resamples),
        "seed": int(seed),
        "level": float(level),
        "unit": "image",
    }

"""Bootstrap confidence intervals over images for every registered metric (`poc59.metrics`).

Rare classes live in one or two validation images, so a per-class score can move a lot with which images
happen to be held out. The unit resampled is the image (pixels of one image are not independent): draw N
images with replacement, sum their statistics (confusion matrices, boundary counts, ...), recompute every
metric under poc59's convention, repeat; the interval is the central `level` percentile range of the
resamples.

Vectorised: a resample is a vector of draw counts per image, so R resamples of a statistic are one
[R, N] x [N, size] matrix product; every statistic is resampled with the same draws.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from poc59.core.progress import Steps
from poc59.metrics import registry

__all__ = ["bootstrap", "bootstrap_iou"]

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


def bootstrap(
    per_image: Mapping[str, Tensor | np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile intervals of every registered metric whose statistics `per_image` holds ({statistic key:
    counts [N, *shape]}, the same N images in each).

    Returns {"intervals": {metric key: array [2] of a split metric, [C, 2] of a per-class one (NaN where
    undefined in every resample)}, "resamples", "seed", "level", "unit": "image"}. Same inputs and seed, same
    intervals.
    """
    stats = {k: torch.as_tensor(v).detach().to(device="cpu", dtype=torch.float64).numpy() for k, v in per_image.items()}
    n = len(next(iter(stats.values())))
    if any(len(v) != n for v in stats.values()):
        raise ValueError(f"per-image statistics of different image counts: { {k: len(v) for k, v in stats.items()} }")
    if n < 1:
        raise ValueError("bootstrap needs at least one image")
    if int(resamples) < 1:
        raise ValueError(f"bootstrap.resamples must be >= 1, got {resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"bootstrap.level must be between 0 and 1 (e.g. 0.95), got {level}")

    metrics = [m for m in registry.METRICS.values() if m.available(stats)]
    rng = np.random.default_rng(seed)
    flat = {k: v.reshape(n, -1) for k, v in stats.items()}
    drawn: dict[str, list[np.ndarray]] = {m.key: [] for m in metrics}
    with Steps(log, "bootstrap", int(resamples), "resamples") as steps:
        for start in range(0, int(resamples), _CHUNK):
            counts = _counts(rng, min(_CHUNK, int(resamples) - start), n)
            resampled = {k: torch.from_numpy(counts @ v).view(-1, *stats[k].shape[1:]) for k, v in flat.items()}
            for m in metrics:
                drawn[m.key].append(m.of(resampled).numpy())  # NaN = undefined in that resample
            steps.advance(n=len(counts))
    return {
        "intervals": {key: _interval(np.concatenate(v), level) for key, v in drawn.items()},
        "resamples": int(resamples),
        "seed": int(seed),
        "level": float(level),
        "unit": "image",
    }


def bootstrap_iou(
    per_image: Tensor | np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """`bootstrap` of per-image confusion matrices [N, C, C] (rows target, cols prediction), as
    {"miou": array [2] (NaN if undefined), "per_class_iou": array [C, 2] (NaN where the class is absent from
    every resample), "resamples", "seed", "level", "unit": "image"}."""
    cms = torch.as_tensor(per_image)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2]:
        raise ValueError(f"per-image confusion matrices must be [N, C, C], got shape {tuple(cms.shape)}")
    out = bootstrap({"confusion": cms}, resamples, seed, level)
    intervals = out.pop("intervals")
    return {"miou": intervals["miou"], "per_class_iou": intervals["iou"], **out}

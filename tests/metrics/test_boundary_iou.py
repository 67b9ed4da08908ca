"""Boundary IoU (Cheng et al., CVPR 2021) against an independent NumPy/SciPy reference, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from poc59.analysis.scores import scores
from poc59.metrics import registry
from poc59.model.metrics import SegmentationStatistics

IGN = 255


def ref_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The paper's band: the mask minus its erosion by a 3 x 3 square repeated d times, outside = background."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=d, border_value=0)
    return mask & ~eroded


def ref_counts(pred: np.ndarray, target: np.ndarray, n: int, ratio: float = 0.02) -> np.ndarray:
    """[2, C] intersection and union of the bands of one image, ignored pixels left out of both."""
    h, w = target.shape
    d = max(1, int(round(ratio * np.sqrt(h * h + w * w))))
    valid = target != IGN
    out = np.zeros((2, n), np.int64)
    for c in range(n):
        g, p = ref_band(target == c, d), ref_band(pred == c, d)
        out[0, c] = (g & p & valid).sum()
        out[1, c] = ((g | p) & valid).sum()
    return out


def blobs(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """Label maps with areas, thin lines and single pixels, so bands are both thinner and thicker than masks."""
    m = np.kron(rng.integers(0, n, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), np.int64))[:h, :w]
    for _ in range(3):  # a one-pixel crack
        m[rng.integers(0, h), :] = rng.integers(0, n)
    m[rng.random((h, w)) < 0.02] = rng.integers(0, n)
    return m


@pytest.mark.parametrize("h, w", [(64, 64), (37, 90), (120, 50)])
def test_counts_match_the_scipy_reference_on_random_masks_with_ignored_pixels(h, w):
    rng = np.random.default_rng(h * w)
    n, b = 4, 3
    target = np.stack([blobs(rng, h, w, n) for _ in range(b)])
    pred = np.stack([blobs(rng, h, w, n) for _ in range(b)])
    target[rng.random(target.shape) < 0.1] = IGN
    target[:, : h // 5, : w // 3] = IGN  # an ignored block too
    pred[target == IGN] = rng.integers(0, n)  # whatever is predicted there must not count
    got = registry.count(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8), n, IGN, per_image=True)
    want = np.stack([ref_counts(p, t, n) for p, t in zip(pred, target)])
    np.testing.assert_array_equal(got["boundary"].numpy(), want)
    summed = registry.count(torch.from_numpy(pred), torch.from_numpy(target), n, IGN)["boundary"]
    np.testing.assert_array_equal(summed.numpy(), want.sum(0))
    # the metric of the split: sums of intersections over sums of unions, NaN where empty
    biou = registry.METRICS["boundary_iou"].of({"boundary": summed}).numpy()
    inter, union = want.sum(0)
    np.testing.assert_allclose(biou, np.where(union > 0, inter / np.maximum(union, 1), np.nan), equal_nan=True)


def test_hand_worked_square_shifted_by_one_pixel():
    # 50 x 50: diagonal 70.7, d = round(0.02 x 70.7) = 1. A 10 x 10 square of class 1 and the same square
    # predicted one pixel to the right: each band is the 36-pixel ring; the rings share the top and bottom
    # rows' 9 common columns, 18 pixels: boundary IoU 18 / (36 + 36 - 18) = 1/3, while IoU is 90 / 110.
    t = np.zeros((50, 50), np.int64)
    p = np.zeros((50, 50), np.int64)
    t[10:20, 10:20] = 1
    p[10:20, 11:21] = 1
    stats = registry.count(torch.from_numpy(p)[None], torch.from_numpy(t)[None], 2, IGN)
    assert stats["boundary"][:, 1].tolist() == [18, 54]
    s = scores(stats, ["Clean", "damage"])
    assert s["per_class"]["damage"]["boundary_iou"] == pytest.approx(1 / 3)
    assert s["per_class"]["damage"]["iou"] == pytest.approx(90 / 110)


def test_a_one_pixel_crack_missed_by_a_pixel_scores_zero_and_ignored_pixels_do_not_count():
    t = np.zeros((1, 40, 40), np.int64)
    t[0, 20, 5:35] = 1  # a hairline crack
    p = np.zeros_like(t)
    p[0, 21, 5:35] = 1  # predicted one row off
    stats = registry.count(torch.from_numpy(p), torch.from_numpy(t), 2, IGN)
    assert stats["boundary"][0, 1] == 0 and stats["boundary"][1, 1] == 60
    # the row predicted wrongly is ignored in the target: only the target's own 30 band pixels remain
    t[0, 21, :] = IGN
    stats = registry.count(torch.from_numpy(p), torch.from_numpy(t), 2, IGN)
    assert stats["boundary"][:, 1].tolist() == [0, 30]
    np.testing.assert_array_equal(stats["boundary"].numpy(), ref_counts(p[0], t[0], 2))


def test_absent_class_is_nan_and_the_mean_skips_it():
    t = torch.zeros(1, 20, 20, dtype=torch.long)
    t[0, 5:10, 5:10] = 1
    stats = registry.count(t.clone(), t, 3, IGN)
    s = scores(stats, ["a", "b", "c"])
    assert s["per_class"]["c"]["boundary_iou"] is None
    assert s["per_class"]["b"]["boundary_iou"] == 1.0 and s["mboundary_iou"] == 1.0
    biou = registry.METRICS["boundary_iou"].of(stats)
    assert math.isnan(biou[2])


def test_training_accumulates_the_same_counts_as_evaluation():
    """SegmentationStatistics (the LightningModule's state) sums what the per-image statistic counts."""
    rng = np.random.default_rng(3)
    metric = SegmentationStatistics(4)
    want = np.zeros((2, 4), np.int64)
    for _ in range(3):
        t = np.stack([blobs(rng, 48, 40, 4) for _ in range(2)])
        p = np.stack([blobs(rng, 48, 40, 4) for _ in range(2)])
        t[rng.random(t.shape) < 0.05] = IGN
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        want += sum(ref_counts(a, b, 4) for a, b in zip(p, t))
    np.testing.assert_array_equal(metric.statistics()["boundary"].numpy(), want)

"""Bootstrap over images: seeded, equal to a plain loop, sensible intervals, degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from poc59.analysis.bootstrap import bootstrap_iou
from poc59.metrics.confusion import batched_iou, batched_miou


def per_image(seed: int, n: int = 40, c: int = 6) -> np.ndarray:
    """Per-image matrices like a segmentation's: a dominant class 0, rarer classes in some images only."""
    rng = np.random.default_rng(seed)
    cms = np.zeros((n, c, c), dtype=np.int64)
    for i in range(n):
        classes = [0] + [k for k in range(1, c) if rng.random() < 0.4]
        for t in classes:
            pixels = int(rng.integers(2000, 5000) if t == 0 else rng.integers(20, 400))
            right = rng.random() * (0.95 if t == 0 else 0.6)
            cms[i, t, t] = int(pixels * right)
            cms[i, t, rng.integers(c)] += pixels - cms[i, t, t]
    return cms


def loop_reference(cms: np.ndarray, resamples: int, seed: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The same resampling written as a plain loop: draw N image indices, sum their matrices, score."""
    rng = np.random.default_rng(seed)
    n = len(cms)
    ious, mious = [], []
    for _ in range(resamples):
        draw = rng.integers(0, n, size=n)
        cm = cms[draw].sum(0)
        ious.append(batched_iou(cm).numpy())
        mious.append(batched_miou(cm).item())
    tail = 100 * (1 - level) / 2
    return np.percentile(mious, [tail, 100 - tail]), np.nanpercentile(np.array(ious), [tail, 100 - tail], axis=0).T


def test_vectorised_equals_a_plain_loop():
    cms = per_image(0)
    out = bootstrap_iou(cms, resamples=300, seed=7, level=0.9)  # 300 > one chunk of 256
    miou, per_class = loop_reference(cms, 300, 7, 0.9)
    np.testing.assert_allclose(out["miou"], miou, rtol=1e-12)
    np.testing.assert_allclose(out["per_class_iou"], per_class, rtol=1e-12, equal_nan=True)
    assert {k: out[k] for k in ("resamples", "seed", "level", "unit")} == {
        "resamples": 300,
        "seed": 7,
        "level": 0.9,
        "unit": "image",
    }


def test_seeded():
    cms = per_image(1)
    a, b = bootstrap_iou(cms, 200, seed=3), bootstrap_iou(cms, 200, seed=3)
    np.testing.assert_array_equal(a["miou"], b["miou"])
    np.testing.assert_array_equal(a["per_class_iou"], b["per_class_iou"])
    assert not np.array_equal(a["miou"], bootstrap_iou(cms, 200, seed=4)["miou"])


def test_intervals_contain_the_point_estimate_and_widen_with_the_level():
    cms = per_image(2)
    total = cms.sum(0)
    point_iou, point_miou = batched_iou(total).numpy(), batched_miou(total).item()
    out = bootstrap_iou(cms, 1000, seed=0, level=0.95)
    lo, hi = out["miou"]
    assert lo < point_miou < hi and hi - lo < 0.2
    for c, (lo_c, hi_c) in enumerate(out["per_class_iou"]):
        assert lo_c <= point_iou[c] <= hi_c, c
    narrow = bootstrap_iou(cms, 1000, seed=0, level=0.5)
    assert np.all(np.diff(narrow["per_class_iou"], axis=1) <= np.diff(out["per_class_iou"], axis=1))
    assert narrow["miou"][1] - narrow["miou"][0] < hi - lo
    # four times the images (the same four times over): a narrower interval, about half as wide
    wide = hi - lo
    more = bootstrap_iou(np.concatenate([cms] * 4), 1000, seed=0)["miou"]
    assert (more[1] - more[0]) < 0.75 * wide


def test_identical_images_give_zero_width():
    one = per_image(3, n=1)[0]
    out = bootstrap_iou(np.stack([one] * 25), 100, seed=0)
    iou = batched_iou(one).numpy()
    np.testing.assert_allclose(out["miou"], [batched_miou(one).item()] * 2, rtol=1e-12)
    defined = ~np.isnan(iou)
    np.testing.assert_allclose(out["per_class_iou"][defined], np.stack([iou[defined]] * 2, axis=1), rtol=1e-12)
    assert np.isnan(out["per_class_iou"][~defined]).all()  # absent from every resample: no interval


def test_a_class_in_one_image_only_has_no_spread_to_show():
    """A limit of any bootstrap over images: one image cannot show variation (evaluate reports images per class)."""
    cms = per_image(4, n=30, c=3)
    cms[:, 2, :] = 0
    cms[:, :, 2] = 0
    cms[5, 2, 2], cms[5, 2, 0] = 80, 20  # class 2 lives in image 5 alone
    out = bootstrap_iou(cms, 1000, seed=0)
    lo, hi = out["per_class_iou"][2]
    assert lo == pytest.approx(0.8) and hi == pytest.approx(0.8)  # when drawn it scores 0.8; otherwise absent
    assert not np.isnan(out["miou"]).any()


def test_bad_arguments():
    cms = per_image(0, n=3)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        bootstrap_iou(cms, level=95)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_iou(cms, resamples=0)
    with pytest.raises(ValueError, match=r"\[N, C, C\]"):
        bootstrap_iou(cms[0])
    with pytest.raises(ValueError, match="at least one image"):
        bootstrap_iou(cms[:0])

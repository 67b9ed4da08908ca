"""Metric convention: split-wide confusion matrix, absent classes excluded, 255 ignored."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from poc59.model.metrics import (
    SegmentationIoU,
    first_class_baseline,
    iou_by_name,
    iou_from_confmat,
    mean_iou,
    metric_convention,
)

IGN = 255


def np_confmat(preds: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """Independent reference: rows = target, cols = prediction, 255 dropped."""
    keep = target != IGN
    return np.bincount(target[keep].astype(np.int64) * n + preds[keep].astype(np.int64), minlength=n * n).reshape(n, n)


def np_iou(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def test_matches_numpy_over_several_updates():
    n = 6
    rng = np.random.default_rng(0)
    metric = SegmentationIoU(n)
    all_p, all_t = [], []
    for _ in range(4):
        t = rng.integers(0, 4, size=(3, 9, 11))  # classes 4, 5 never in target
        p = rng.integers(0, 5, size=(3, 9, 11))  # class 4 predicted, class 5 never
        t[rng.random(t.shape) < 0.2] = IGN
        # make some predictions at ignored pixels be class 5: must not count
        p[(t == IGN) & (rng.random(t.shape) < 0.5)] = 5
        metric.update(torch.from_numpy(p), torch.from_numpy(t).to(torch.uint8))
        all_p.append(p)
        all_t.append(t)
    cm_ref = np_confmat(np.concatenate(all_p), np.concatenate(all_t), n)
    cm = metric.confusion_matrix()
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), cm_ref)

    iou_ref = np_iou(cm_ref)
    iou = metric.per_class()
    assert iou.dtype == torch.float64
    np.testing.assert_allclose(iou.numpy(), iou_ref, rtol=1e-12, equal_nan=True)
    assert math.isnan(iou[5]) and iou[4] == 0.0  # absent vs predicted-but-never-present
    assert metric.miou() == pytest.approx(float(np.nanmean(iou_ref)), rel=1e-12)
    # accumulation is over the split, not a mean of per-batch mIoUs
    per_batch = [np.nanmean(np_iou(np_confmat(p, t, n))) for p, t in zip(all_p, all_t)]
    assert metric.miou() != pytest.approx(float(np.mean(per_batch)), rel=1e-6)


def test_confmat_orientation_rows_target_cols_prediction():
    metric = SegmentationIoU(3)
    metric.update(torch.tensor([[1, 1, 2]]), torch.tensor([[0, 0, 0]]))  # target 0 predicted 1 (x2), 2 (x1)
    cm = metric.confusion_matrix()
    assert cm[0, 1] == 2 and cm[0, 2] == 1 and cm[1, 0] == 0
    assert cm.sum() == 3


def test_hand_worked_example():
    # 4 classes. target / prediction per pixel:
    #   t: 0 0 0 1 1 255 255
    #   p: 0 0 1 1 2   0   3
    # confusion (rows t, cols p): t0 -> p0:2, p1:1 ; t1 -> p1:1, p2:1 ; ignored pixels dropped
    # IoU0 = 2 / (3 + 2 - 2) = 2/3
    # IoU1 = 1 / (2 + 2 - 1) = 1/3
    # IoU2 = 0 / (0 + 1 - 0) = 0     (predicted, never present)
    # IoU3 = NaN                     (only "predicted" at an ignored pixel -> absent)
    # mIoU = (2/3 + 1/3 + 0) / 3 = 1/3   (torchmetrics' own macro average would say 0.25)
    t = torch.tensor([[0, 0, 0, 1, 1, IGN, IGN]])
    p = torch.tensor([[0, 0, 1, 1, 2, 0, 3]])
    metric = SegmentationIoU(4)
    metric.update(p, t)
    iou = metric.per_class()
    assert iou[:3].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert math.isnan(iou[3])
    assert metric.miou() == pytest.approx(1 / 3)
    names = ["Clean", "A", "B", "C"]
    by_name = iou_by_name(iou, names)
    assert by_name == pytest.approx({"Clean": 2 / 3, "A": 1 / 3, "B": 0.0, "C": None})
    assert json.loads(json.dumps(by_name))["C"] is None
    rep = metric.report(names)
    assert rep["miou"] == pytest.approx(1 / 3)
    assert rep["per_class_iou"]["C"] is None
    assert rep["convention"] == metric_convention()


def test_split_in_two_updates_equals_one_update():
    t = torch.tensor([[0, 0, 0, 1, 1, IGN, IGN]])
    p = torch.tensor([[0, 0, 1, 1, 2, 0, 3]])
    m = SegmentationIoU(4)
    m.update(p[:, :3], t[:, :3])
    m.update(p[:, 3:], t[:, 3:])
    assert m.miou() == pytest.approx(1 / 3)


def test_logits_update_same_as_labels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    t = torch.randint(0, 5, (2, 6, 7), generator=g)
    t[:, 0] = IGN
    a, b = SegmentationIoU(5), SegmentationIoU(5)
    a.update(logits, t)
    b.update(logits.argmax(1), t)
    assert torch.equal(a.confusion_matrix(), b.confusion_matrix())


def test_compute_forward_and_reset():
    m = SegmentationIoU(3)
    batch = m(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))  # Metric.forward: batch value
    assert batch[0] == pytest.approx(0.5) and batch[1] == 0.0 and math.isnan(batch[2])
    m.update(torch.tensor([[2]]), torch.tensor([[2]]))
    assert torch.equal(m.compute(), m.per_class())
    assert m.per_class()[2] == 1.0
    m.reset()
    assert m.confusion_matrix().sum() == 0


def test_iou_from_confmat_and_mean_iou_edge_cases():
    cm = torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 0]])
    iou = iou_from_confmat(cm)
    # class 0: 5 / (5 + 6 - 5); class 1 absent; class 2: 0 / (1 + 0 - 0)
    assert iou[0] == pytest.approx(5 / 6) and math.isnan(iou[1]) and iou[2] == 0.0
    assert mean_iou(iou) == pytest.approx((5 / 6 + 0) / 2)
    assert math.isnan(mean_iou(torch.full((4,), float("nan"))))
    with pytest.raises(ValueError):
        iou_from_confmat(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        iou_by_name(iou, ["a", "b"])


def test_first_class_baseline_hand_computed():
    # valid labels: image 1: 0 0 1 2 0 ; image 2: 0 0 0 1  -> 9 valid, 6 of class 0
    targets = torch.tensor(
        [
            [[0, 0, 1], [IGN, 2, 0]],
            [[0, 0, 0], [1, IGN, IGN]],
        ],
        dtype=torch.uint8,
    )
    # predict 0 everywhere: IoU0 = 6 / 9, IoU1 = IoU2 = 0, class 3 absent -> mIoU = (2/3) / 3
    assert first_class_baseline(targets, 4) == pytest.approx(2 / 9)
    assert first_class_baseline(targets, 4, chunk=1) == pytest.approx(2 / 9)
    assert first_class_baseline(targets.numpy(), 4) == pytest.approx(2 / 9)
    # all pixels clean -> perfect 1.0
    assert first_class_baseline(torch.zeros(1, 2, 2, dtype=torch.uint8), 16) == pytest.approx(1.0)


def test_metric_convention_is_one_line():
    s = metric_convention()
    assert "\n" not in s and "255" in s and "absent" in s


def test_the_accelerator_histogram_counts_what_bincount_counts():
    """On a GPU the confusion matrix is counted by scatter-adds into rows (bincount would sync with the host)."""
    from poc59.model.metrics import HISTOGRAM_ROW, histogram

    g = torch.Generator().manual_seed(0)
    for n in (1, HISTOGRAM_ROW - 1, HISTOGRAM_ROW, 3 * HISTOGRAM_ROW + 17):
        values = torch.randint(0, 257, (n,), generator=g)
        values[: n // 2] = 0  # one crowded bin, as Clean is
        assert torch.equal(histogram(values, 257, scatter=True), torch.bincount(values, minlength=257))
    assert torch.equal(histogram(torch.tensor([[2, 2], [0, 1]]), 4), torch.tensor([1, 1, 2, 0]))


def test_per_image_confusion_matrices_sum_to_the_split_one():
    from poc59.model.metrics import confusion_matrix

    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 4, (3, 5, 6), generator=g)
    p = torch.randint(0, 4, (3, 5, 6), generator=g)
    t[0, 0] = IGN
    per_image = confusion_matrix(p, t, 4, per_image=True)
    assert per_image.shape == (3, 4, 4)
    for i in range(3):
        np.testing.assert_array_equal(per_image[i].numpy(), np_confmat(p[i].numpy(), t[i].numpy(), 4))
    assert torch.equal(per_image.sum(0), confusion_matrix(p, t, 4))

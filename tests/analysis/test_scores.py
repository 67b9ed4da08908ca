"""Scores from one confusion matrix: against an independent NumPy implementation and a hand-worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poc59.analysis.scores import scores
from poc59.metrics.confusion import (
    LEGACY_CONVENTION,
    batched_iou,
    batched_miou,
    f1,
    fw_iou,
    miou_legacy,
    pixel_accuracy,
    precision,
    present,
    recall,
    support,
)
from poc59.model.metrics import iou_from_confmat


def np_reference(cm: np.ndarray) -> dict:
    """Textbook formulas, class by class in plain Python/NumPy (no shared code with poc59)."""
    cm = cm.astype(float)
    c = cm.shape[0]
    out = {k: [] for k in ("iou", "precision", "recall", "f1")}
    for k in range(c):
        tp, fn, fp = cm[k, k], cm[k, :].sum() - cm[k, k], cm[:, k].sum() - cm[k, k]
        out["iou"].append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        out["precision"].append(tp / (tp + fp) if tp + fp else np.nan)
        out["recall"].append(tp / (tp + fn) if tp + fn else np.nan)
        out["f1"].append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    iou = np.array(out["iou"])
    total = cm.sum()
    freq = cm.sum(1) / total
    return {
        **{k: np.array(v) for k, v in out.items()},
        "support": cm.sum(1),
        "present": ~np.isnan(iou),
        "miou": np.nanmean(iou),
        "miou_legacy": np.where(np.isnan(iou), 0.0, iou).sum() / c,
        "pixel_accuracy": np.trace(cm) / total,
        "fw_iou": sum(freq[k] * iou[k] for k in range(c) if freq[k] > 0),
    }


def random_confmats(seed: int, n: int = 20, c: int = 7) -> list[np.ndarray]:
    """Sparse random matrices with empty rows (not in target) and empty columns (never predicted)."""
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(n):
        cm = rng.integers(0, 1000, (c, c)) * (rng.random((c, c)) < 0.4)
        cm[rng.integers(c)] = 0  # a class never in the target
        cm[:, rng.integers(c)] = 0  # a class never predicted
        mats.append(cm)
    return mats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_numpy_on_random_matrices(seed):
    for cm in random_confmats(seed):
        ref = np_reference(cm)
        for fn, key in ((precision, "precision"), (recall, "recall"), (f1, "f1"), (batched_iou, "iou")):
            np.testing.assert_allclose(
                fn(torch.from_numpy(cm)).numpy(), ref[key], rtol=1e-12, equal_nan=True, err_msg=key
            )
        np.testing.assert_array_equal(iou_from_confmat(torch.from_numpy(cm)).numpy(), batched_iou(cm).numpy())
        np.testing.assert_array_equal(support(cm).numpy(), ref["support"])
        np.testing.assert_array_equal(present(cm).numpy(), ref["present"])
        assert miou_legacy(cm) == pytest.approx(ref["miou_legacy"], rel=1e-12)
        assert pixel_accuracy(cm) == pytest.approx(ref["pixel_accuracy"], rel=1e-12)
        assert fw_iou(cm) == pytest.approx(ref["fw_iou"], rel=1e-12)
        s = scores(cm, [f"c{k}" for k in range(len(cm))])
        assert s["miou"] == pytest.approx(ref["miou"], rel=1e-12)
        for k, row in enumerate(s["per_class"].values()):
            for key in ("iou", "precision", "recall", "f1"):
                assert (row[key] is None) == bool(np.isnan(ref[key][k])), key
                if row[key] is not None:
                    assert row[key] == pytest.approx(ref[key][k], rel=1e-12)


def test_batched_over_a_stack_equals_one_by_one():
    mats = np.stack(random_confmats(3, n=9, c=5)).reshape(3, 3, 5, 5)
    iou, miou = batched_iou(mats), batched_miou(mats)
    assert iou.shape == (3, 3, 5) and miou.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            ref = np_reference(mats[i, j])
            np.testing.assert_allclose(iou[i, j].numpy(), ref["iou"], rtol=1e-12, equal_nan=True)
            assert miou[i, j].item() == pytest.approx(ref["miou"], rel=1e-12)
    assert math.isnan(batched_miou(np.zeros((2, 3, 3)))[0])  # nothing scored: undefined, not 0


def test_hand_computed_example():
    # rows = target, columns = prediction; 4 classes:
    #   class 0: 60 target pixels, 55 predicted, 50 correct
    #   class 1: 30 target pixels, 30 predicted, 20 correct
    #   class 2: never in the target, predicted 5 times (wrongly)  -> IoU 0, counted
    #   class 3: neither in target nor predicted                   -> absent
    cm = torch.tensor([[50, 10, 0, 0], [5, 20, 5, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = scores(cm, ["Clean", "Crack", "Dust", "Hair"])
    pc = s["per_class"]
    # IoU = TP / (target + predicted - TP): 50 / (60 + 55 - 50) = 10/13; 20 / (30 + 30 - 20) = 1/2; 0 / 5 = 0
    assert [pc[n]["iou"] for n in ("Clean", "Crack", "Dust")] == pytest.approx([10 / 13, 1 / 2, 0.0])
    assert pc["Hair"]["iou"] is None and not pc["Hair"]["present"] and pc["Dust"]["present"]
    # poc59 mIoU: mean over the 3 non-absent classes = (10/13 + 1/2 + 0) / 3 = 11/26
    assert s["miou"] == pytest.approx(11 / 26)
    # earlier system: absent class as 0, over all 4 = (10/13 + 1/2 + 0 + 0) / 4 = 33/104
    assert s["miou_legacy"] == pytest.approx(33 / 104)
    # precision = TP / predicted: 50/55 = 10/11, 20/30 = 2/3, 0/5 = 0, Hair never predicted -> undefined
    assert [pc[n]["precision"] for n in ("Clean", "Crack", "Dust")] == pytest.approx([10 / 11, 2 / 3, 0.0])
    assert pc["Hair"]["precision"] is None
    # recall = TP / target: 50/60 = 5/6, 20/30 = 2/3; Dust and Hair are not in the target -> undefined
    assert [pc[n]["recall"] for n in ("Clean", "Crack")] == pytest.approx([5 / 6, 2 / 3])
    assert pc["Dust"]["recall"] is None and pc["Hair"]["recall"] is None
    # F1 = 2 TP / (target + predicted): 100/115 = 20/23, 40/60 = 2/3, 0/5 = 0
    assert [pc[n]["f1"] for n in ("Clean", "Crack", "Dust")] == pytest.approx([20 / 23, 2 / 3, 0.0])
    assert [pc[n]["support"] for n in ("Clean", "Crack", "Dust", "Hair")] == [60, 30, 0, 0]
    # pixel accuracy = (50 + 20) / 90 = 7/9
    assert s["pixel_accuracy"] == pytest.approx(7 / 9)
    # fwIoU = 60/90 * 10/13 + 30/90 * 1/2 = 20/39 + 1/6 = 53/78
    assert s["fw_iou"] == pytest.approx(53 / 78)
    assert "counted as IoU 0" in LEGACY_CONVENTION and "all classes" in LEGACY_CONVENTION


def test_empty_and_malformed():
    s = scores(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"])
    assert s["miou"] is None and s["pixel_accuracy"] is None and s["fw_iou"] is None and s["miou_legacy"] == 0.0
    with pytest.raises(ValueError, match=r"\[3, 3\] confusion matrix is needed for 3 classes"):
        scores(np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="must be square"):
        precision(np.zeros((2, 3)))

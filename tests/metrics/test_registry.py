"""The registry: a metric is one function of the statistics it declares, computed for one split or a stack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poc59.analysis.bootstrap import bootstrap, bootstrap_iou
from poc59.core.config import SettingError
from poc59.metrics import registry


@pytest.fixture
def scratch(monkeypatch):
    """Registrations that end with the test."""
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    monkeypatch.setattr(registry, "STATISTICS", dict(registry.STATISTICS))


def test_a_new_statistic_and_metric_are_counted_scored_and_bootstrapped(scratch):
    @registry.statistic("labelled", lambda c: (c,), "target pixels of each class, ignored ones left out")
    def labelled(preds, target, num_classes, ignore_index, *, per_image=False):
        one_hot = torch.stack([(target == c) for c in range(num_classes)], dim=1).flatten(2).sum(-1)  # [B, C]
        return one_hot if per_image else one_hot.sum(0)

    @registry.metric(
        "share", "share", "share", "the class's part of the labelled pixels", per_class=True, needs=("labelled",)
    )
    def share(counts):
        return counts / counts.sum(-1, keepdim=True)

    t = torch.tensor([[[0, 0, 1, 255]], [[1, 1, 1, 2]]])
    stats = registry.count(t.clone(), t, 3, 255, per_image=True)
    assert stats["labelled"].tolist() == [[2, 1, 0], [0, 3, 1]]
    s = registry.scores({k: v.sum(0) for k, v in stats.items()}, ["a", "b", "c"])
    assert s["per_class"]["b"]["share"] == pytest.approx(4 / 7) and s["miou"] == 1.0
    boot = bootstrap(stats, resamples=20, seed=0)
    assert boot["intervals"]["share"].shape == (3, 2) and set(boot["intervals"]) >= {"share", "iou", "miou"}


def test_a_function_of_one_matrix_is_applied_to_each_of_a_stack(scratch):
    @registry.metric("trace", "trace", "trace", "correct pixels", stacked=False)
    def trace(cm):
        assert cm.ndim == 2  # never given a stack
        return float(cm.trace())

    cms = torch.tensor([[[1, 2], [3, 4]], [[5, 0], [0, 1]]])
    assert registry.METRICS["trace"].of({"confusion": cms}).tolist() == [5.0, 6.0]
    assert registry.METRICS["trace"].of({"confusion": cms[0]}).item() == 5.0  # one split: a number


def test_bootstrap_of_the_confusion_matrix_is_bootstrap_iou():
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 50, size=(12, 4, 4))
    a, b = bootstrap({"confusion": cms}, 64, seed=1), bootstrap_iou(cms, 64, seed=1)
    np.testing.assert_array_equal(a["intervals"]["miou"], b["miou"])
    np.testing.assert_array_equal(a["intervals"]["iou"], b["per_class_iou"])


def test_a_metric_needing_an_unregistered_statistic_is_refused(scratch):
    with pytest.raises(ValueError, match="needs unregistered statistics"):
        registry.metric("x", "x", "x", "x", needs=("nothing",))(lambda s: s)


def test_monitor_is_a_split_metric_and_the_error_names_the_choices():
    assert registry.check_monitor(None) == "val/mIoU"
    assert registry.check_monitor("val/fwIoU") == "val/fwIoU"
    for bad in ("val/IoU", "mIoU", "val/nope"):  # a per-class metric, no stage, unknown
        with pytest.raises(SettingError, match=rf"monitor={bad}: .*monitor=val/mIoU"):
            registry.check_monitor(bad)


def test_best_entry_skips_missing_and_undefined_values_and_keeps_the_earliest_tie():
    history = [
        {"epoch": 0, "mIoU": 0.5},
        {"epoch": 1, "mIoU": 0.7, "fwIoU": math.nan},
        {"epoch": 2, "mIoU": 0.7, "fwIoU": 0.2},
        {"epoch": 3, "mIoU": None, "fwIoU": 0.1},
    ]
    assert registry.best_entry(history)["epoch"] == 1
    assert registry.best_entry(history, "val/fwIoU")["epoch"] == 2
    assert registry.best_entry(history[:1], "val/fwIoU") is None

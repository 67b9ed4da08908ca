"""Everything reported about a segmentation, as a JSON-ready record: the registry's metrics
(`poc59.metrics.registry`) of one split's statistics, plus each class's support and presence.

The metrics themselves live in `poc59.metrics` (the confusion-matrix ones in `poc59.metrics.confusion`);
this module is their user for evaluate, compare and cross-validation pooling, and keeps the names earlier
callers import (`register` registers a function of one confusion matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from poc59.metrics import registry
from poc59.metrics.confusion import (
    LEGACY_CONVENTION,
    batched_iou,
    batched_miou,
    f1,
    fw_iou,
    iou,
    miou,
    miou_legacy,
    pixel_accuracy,
    precision,
    present,
    recall,
    support,
)
from poc59.metrics.registry import METRICS, Metric, class_metrics, split_metrics

__all__ = [
    "LEGACY_CONVENTION",
    "METRICS",
    "Metric",
    "batched_iou",
    "batched_miou",
    "class_metrics",
    "f1",
    "fw_iou",
    "iou",
    "miou",
    "miou_legacy",
    "pixel_accuracy",
    "precision",
    "present",
    "recall",
    "register",
    "scores",
    "split_metrics",
    "support",
]


def register(key: str, label: str, meaning: str, per_class: bool = False) -> Callable:
    """Decorator: report `fn(confmat)` (of one [C, C] matrix) as `key`, logged under the same name
    (`poc59.metrics.registry.metric` registers a metric of any statistics)."""
    return registry.metric(key, key, label, meaning, per_class=per_class, stacked=False)


def scores(stats: Mapping[str, Tensor | np.ndarray] | Tensor | np.ndarray, names: Sequence[str]) -> dict:
    """Every registered metric of one split, JSON-ready (NaN -> None): split metrics by key, and per class by
    name each per-class metric, its "support" (target pixels) and "present" (in target or prediction).

    `stats` maps statistic keys to the split's counts; a bare [C, C] confusion matrix stands for
    {"confusion": it} (metrics needing other statistics are then left out)."""
    if not isinstance(stats, Mapping):
        stats = {"confusion": stats}
    cm = stats["confusion"]
    if tuple(np.shape(cm)) != (len(names), len(names)):
        raise ValueError(
            f"a [{len(names)}, {len(names)}] confusion matrix is needed for {len(names)} classes, "
            f"got {tuple(np.shape(cm))}"
        )
    out = registry.scores(stats, names)
    sup, pres = support(cm).tolist(), present(cm).tolist()
    for c, name in enumerate(names):
        out["per_class"][str(name)].update(support=int(sup[c]), present=bool(pres[c]))
    return out

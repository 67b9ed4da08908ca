"""Everything reported about a segmentation, computed from one [C, C] confusion matrix.

Rows are the target class, columns the predicted class; ignored pixels (label
255) are not in the matrix. Per-class IoU and mIoU are poc59's one convention
(poc59.model.metrics): a class neither in the target nor predicted is *absent*
(NaN here, null in JSON) and left out of the mean. The earlier system's mIoU
counted absent classes as 0 over all classes; it is offered, labelled, only so
its published numbers can be compared.

Flat functions on float64 tensors; ratios whose denominator is 0 are NaN
(undefined), never 0.

`METRICS` is the one table of what is reported: a metric registered there (`register`, one function of the
matrix) is computed by `scores`, written to evaluate's metrics.json, printed by its report with its label
and meaning, and carried into an exported model's card.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from poc59.model.metrics import iou_from_confmat, mean_iou, metric_convention

__all__ = [
    "LEGACY_CONVENTION",
    "METRICS",
    "Metric",
    "class_metrics",
    "register",
    "split_metrics",
    "batched_iou",
    "batched_miou",
    "f1",
    "fw_iou",
    "iou",
    "miou",
    "miou_legacy",
    "pixel_accuracy",
    "precision",
    "present",
    "recall",
    "scores",
    "support",
]

LEGACY_CONVENTION = (
    "earlier system's mIoU: absent classes counted as IoU 0, mean over all classes "
    "(lower than poc59's on small splits; for comparison with its published numbers only)"
)


@dataclass(frozen=True)
class Metric:
    """One reported number of a confusion matrix: its key in metrics.json, the label and meaning shown beside
    it, and its function (per class: [C, C] -> [C] tensor, NaN = undefined; of the split: -> float)."""

    key: str
    label: str
    meaning: str
    compute: Callable[[Tensor], Tensor | float]
    per_class: bool = False


METRICS: dict[str, Metric] = {}  # in registration order: the order of the report's columns and lines


def register(key: str, label: str, meaning: str, per_class: bool = False) -> Callable:
    """Decorator: report `fn(confmat)` as `key` (see the module docstring for where it then appears)."""

    def add(fn: Callable[[Tensor], Tensor | float]) -> Callable[[Tensor], Tensor | float]:
        METRICS[key] = Metric(key, label, meaning, fn, per_class)
        return fn

    return add


def class_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.per_class]


def split_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if not m.per_class]


def _cm(confmat: Tensor | np.ndarray) -> Tensor:
    cm = torch.as_tensor(confmat).detach().to(device="cpu", dtype=torch.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion matrix must be square [..., C, C], got shape {tuple(cm.shape)}")
    return cm


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    out = torch.full_like(num, float("nan"))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def batched_iou(confmats: Tensor | np.ndarray) -> Tensor:
    """Per-class IoU of each of a stack of matrices [..., C, C] -> [..., C] (NaN = absent).

    The arithmetic of iou_from_confmat, over a leading batch (e.g. bootstrap resamples).
    """
    cm = _cm(confmats)
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return _ratio(tp, cm.sum(-1) + cm.sum(-2) - tp)


def batched_miou(confmats: Tensor | np.ndarray) -> Tensor:
    """mIoU (poc59 convention) of each of a stack of matrices [..., C, C] -> [...]; NaN where every class is absent."""
    iou = batched_iou(confmats)
    defined = ~torch.isnan(iou).all(-1)
    out = torch.full(iou.shape[:-1], float("nan"), dtype=torch.float64)
    out[defined] = iou[defined].nanmean(-1)
    return out


@register("iou", "IoU", "TP / (TP + FP + FN) of the split's pixels", per_class=True)
def iou(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: poc59's IoU (poc59.model.metrics.iou_from_confmat); NaN when absent."""
    return iou_from_confmat(_cm(confmat))


@register("precision", "precision", "correct / predicted pixels (n/a: never predicted)", per_class=True)
def precision(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: correct / predicted pixels; NaN when the class is never predicted."""
    cm = _cm(confmat)
    return _ratio(cm.diagonal(dim1=-2, dim2=-1).clone(), cm.sum(-2))


@register("recall", "recall", "correct / target pixels", per_class=True)
def recall(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: correct / target pixels; NaN when the class is not in the target."""
    cm = _cm(confmat)
    return _ratio(cm.diagonal(dim1=-2, dim2=-1).clone(), cm.sum(-1))


@register("f1", "F1", "2 TP / (target + predicted pixels), = Dice", per_class=True)
def f1(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: 2 TP / (target + predicted pixels) (= Dice = harmonic mean of precision and recall); NaN if absent.

    Defined whenever the class is not absent, even if precision is undefined (never predicted: F1 = 0).
    """
    cm = _cm(confmat)
    return _ratio(2 * cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1) + cm.sum(-2))


def support(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: target pixels (int64)."""
    return _cm(confmat).sum(-1).round().to(torch.int64)


def present(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: in the target or predicted somewhere (the classes poc59's mIoU averages over)."""
    cm = _cm(confmat)
    return (cm.sum(-1) + cm.sum(-2)) > 0


@register("miou", "mIoU", metric_convention())
def miou(confmat: Tensor | np.ndarray) -> float:
    """poc59's mIoU (see metric_convention); NaN when every class is absent."""
    return mean_iou(iou_from_confmat(_cm(confmat)))


@register("miou_legacy", "mIoU, earlier system's convention", LEGACY_CONVENTION)
def miou_legacy(confmat: Tensor | np.ndarray) -> float:
    """The earlier system's mIoU (see LEGACY_CONVENTION): absent classes as 0, mean over all C classes."""
    return float(torch.nan_to_num(iou_from_confmat(_cm(confmat)), nan=0.0).mean())


@register("pixel_accuracy", "pixel accuracy", "correct / all non-ignored pixels of the split")
def pixel_accuracy(confmat: Tensor | np.ndarray) -> float:
    """Correct / all non-ignored pixels; NaN for an empty matrix."""
    cm = _cm(confmat)
    total = float(cm.sum())
    return float(cm.diagonal().sum()) / total if total > 0 else math.nan


@register("fw_iou", "frequency-weighted IoU", "per-class IoU weighted by target pixel share")
def fw_iou(confmat: Tensor | np.ndarray) -> float:
    """Frequency-weighted IoU: sum over classes of (target pixel share) x IoU; NaN for an empty matrix.

    Classes not in the target weigh 0 (a class in the target always has a defined IoU).
    """
    cm = _cm(confmat)
    total = float(cm.sum())
    if total <= 0:
        return math.nan
    freq = cm.sum(1) / total
    keep = freq > 0
    return float((freq[keep] * iou_from_confmat(cm)[keep]).sum())


def _none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def scores(confmat: Tensor | np.ndarray, names: Sequence[str]) -> dict:
    """All of the above for one matrix, JSON-ready (NaN -> None): headline numbers and per class by name."""
    cm = _cm(confmat)
    if cm.ndim != 2 or cm.shape[0] != len(names):
        raise ValueError(
            f"a [{len(names)}, {len(names)}] confusion matrix is needed for {len(names)} classes, got {tuple(cm.shape)}"
        )
    columns = {m.key: m.compute(cm) for m in class_metrics()}
    sup, pres = support(cm).tolist(), present(cm).tolist()
    per_class = {
        str(name): {
            **{key: _none(float(values[c])) for key, values in columns.items()},
            "support": int(sup[c]),
            "present": bool(pres[c]),
        }
        for c, name in enumerate(names)
    }
    return {**{m.key: _none(float(m.compute(cm))) for m in split_metrics()}, "per_class": per_class}

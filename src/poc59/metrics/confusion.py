"""The confusion-matrix statistic and every metric of it, under poc59's one metric convention.

- One confusion matrix is accumulated over the whole evaluated split (the sum of its images'; rows =
  target class, columns = predicted class; pixels whose target is 255 are dropped).
- Per-class IoU = diag / (rowsum + colsum - diag). A class that is neither in the target nor predicted
  anywhere in the split has an empty union: it is *absent* and its IoU is NaN (JSON null), not 0 and not 1.
- mIoU = mean over non-absent classes (the mmsegmentation convention). A class predicted but never present
  in the target counts as IoU 0.

The earlier system's mIoU counted absent classes as 0 over all classes; it is offered, labelled, only so
its published numbers can be compared. Ratios whose denominator is 0 are NaN (undefined), never 0. Every
function takes matrices stacked over any leading dimensions ``[..., C, C]`` (e.g. bootstrap resamples);
the split metrics return a float for one matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from poc59.core.classes import IGNORE_INDEX
from poc59.metrics.registry import metric, statistic

__all__ = [
    "HISTOGRAM_ROW",
    "LEGACY_CONVENTION",
    "batched_iou",
    "batched_miou",
    "confusion_matrix",
    "f1",
    "fw_iou",
    "histogram",
    "iou",
    "iou_by_name",
    "iou_from_confmat",
    "mean_iou",
    "mean_over_present",
    "metric_convention",
    "miou",
    "miou_legacy",
    "pixel_accuracy",
    "precision",
    "present",
    "recall",
    "support",
]

LEGACY_CONVENTION = (
    "earlier system's mIoU: absent classes counted as IoU 0, mean over all classes "
    "(lower than poc59's on small splits; for comparison with its published numbers only)"
)


def metric_convention() -> str:
    """One-line description of the convention, for labelling reported numbers."""
    return (
        "mIoU: mean of per-class IoU from one confusion matrix over the whole split, "
        "over classes present in target or prediction (absent classes excluded; "
        f"predicted-but-never-present counts 0); ignore label {IGNORE_INDEX} excluded"
    )


HISTOGRAM_ROW = 1 << 14  # values per row of the scatter table in `histogram` (see there)


def histogram(values: Tensor, bins: int, *, scatter: bool | None = None) -> Tensor:
    """int64 counts of the integers ``values`` (any shape, each in ``0..bins-1``), without a host sync.

    On a CPU this is ``torch.bincount``. On an accelerator ``bincount`` first reads ``values.max()`` back
    to size its output, a host sync that stalls every training step; instead (``scatter``, the default
    off the CPU) the values are cut into rows of ``HISTOGRAM_ROW`` and scatter-added into a
    ``[rows, bins]`` table, which is summed. The rows spread the atomic adds of the frequent bins (most
    pixels are Clean) over many addresses.
    """
    flat = values.reshape(-1).long()
    if scatter is None:
        scatter = flat.device.type != "cpu"
    if not scatter:
        return torch.bincount(flat, minlength=bins)
    rows = max(1, -(-flat.numel() // HISTOGRAM_ROW))
    padded = torch.nn.functional.pad(
        flat, (0, rows * HISTOGRAM_ROW - flat.numel()), value=bins
    )  # padding -> bin `bins`
    table = torch.zeros(rows, bins + 1, dtype=torch.int64, device=flat.device)
    table.scatter_add_(
        1,
        padded.view(rows, HISTOGRAM_ROW),
        torch.ones(1, dtype=torch.int64, device=flat.device).expand(rows, HISTOGRAM_ROW),
    )
    return table.sum(0)[:bins]


@statistic("confusion", lambda c: (c, c), "pixels of each (target class, predicted class); ignored pixels left out")
def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, per_image: bool = False
) -> Tensor:
    """int64 confusion matrix of integer label maps ``preds`` and ``target`` ``[B, H, W]``: ``[C, C]``, or
    ``[B, C, C]`` with ``per_image``; rows target, columns prediction; pixels whose target is
    ``ignore_index`` are left out (they go to one extra bin, which is dropped: no boolean indexing, so no
    host sync). Label values are not checked here; the data layer refuses labels outside 0..C-1 and 255.
    """
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must be label maps of one shape")
    c = num_classes
    cells = c * c
    index = target.long() * c + preds.long()
    if per_image:
        image = torch.arange(target.shape[0], device=target.device).view(-1, *([1] * (target.ndim - 1)))
        index = index + image * cells
        cells *= target.shape[0]
    index = torch.where(target == ignore_index, cells, index)
    counts = histogram(index, cells + 1)[:cells]
    return counts.view(-1, c, c) if per_image else counts.view(c, c)


def _cm(confmat: Tensor | np.ndarray) -> Tensor:
    cm = torch.as_tensor(confmat).detach().to(device="cpu", dtype=torch.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion matrix must be square [..., C, C], got shape {tuple(cm.shape)}")
    return cm


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den elementwise (float64), NaN where den is 0."""
    out = torch.full_like(num, float("nan"), dtype=torch.float64)
    ok = den > 0
    out[ok] = num[ok].to(torch.float64) / den[ok]
    return out


def _scalar(values: Tensor) -> Tensor | float:
    """A split metric of one matrix as a float; of a stack, the tensor."""
    return float(values) if values.ndim == 0 else values


def mean_over_present(per_class: Tensor) -> Tensor:
    """Mean over the last dimension's defined (non-NaN) values ``[..., C] -> [...]``; NaN where none is defined."""
    defined = ~torch.isnan(per_class).all(-1)
    out = torch.full(per_class.shape[:-1], float("nan"), dtype=torch.float64)
    out[defined] = per_class[defined].nanmean(-1)
    return out


def iou_from_confmat(confmat: Tensor | np.ndarray) -> Tensor:
    """Per-class IoU (float64) from a [C, C] confusion matrix (rows target, cols prediction).

    IoU_c = cm[c, c] / (sum_j cm[c, j] + sum_i cm[i, c] - cm[c, c]); NaN where the
    union is empty (class absent from target and prediction).
    """
    cm = torch.as_tensor(confmat).detach().to(device="cpu", dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {tuple(cm.shape)}")
    return batched_iou(cm)


def batched_iou(confmats: Tensor | np.ndarray) -> Tensor:
    """Per-class IoU of each of a stack of matrices [..., C, C] -> [..., C] (NaN = absent)."""
    cm = _cm(confmats)
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return ratio(tp, cm.sum(-1) + cm.sum(-2) - tp)


def batched_miou(confmats: Tensor | np.ndarray) -> Tensor:
    """mIoU (poc59 convention) of each of a stack of matrices [..., C, C] -> [...]; NaN where every class is absent."""
    return mean_over_present(batched_iou(confmats))


def mean_iou(iou: Tensor) -> float:
    """Mean over non-absent (non-NaN) classes of per-class IoU [C]; NaN if every class is absent."""
    return float(mean_over_present(torch.as_tensor(iou).detach().to(device="cpu", dtype=torch.float64)))


def iou_by_name(iou: Tensor, names: Sequence[str]) -> dict[str, float | None]:
    """``{class name: IoU}`` in class order, ``None`` (JSON null) for absent classes."""
    vals = torch.as_tensor(iou).detach().to(device="cpu", dtype=torch.float64).tolist()
    if len(vals) != len(names):
        raise ValueError(f"{len(vals)} IoU values but {len(names)} class names")
    return {str(n): (None if math.isnan(v) else float(v)) for n, v in zip(names, vals)}


@metric("iou", "IoU", "IoU", "TP / (TP + FP + FN) of the split's pixels", per_class=True)
def iou(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: poc59's IoU; NaN when absent."""
    return batched_iou(confmat)


@metric("precision", "precision", "precision", "correct / predicted pixels (n/a: never predicted)", per_class=True)
def precision(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: correct / predicted pixels; NaN when the class is never predicted."""
    cm = _cm(confmat)
    return ratio(cm.diagonal(dim1=-2, dim2=-1).clone(), cm.sum(-2))


@metric("recall", "recall", "recall", "correct / target pixels", per_class=True)
def recall(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: correct / target pixels; NaN when the class is not in the target."""
    cm = _cm(confmat)
    return ratio(cm.diagonal(dim1=-2, dim2=-1).clone(), cm.sum(-1))


@metric("f1", "F1", "F1", "2 TP / (target + predicted pixels), = Dice", per_class=True)
def f1(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: 2 TP / (target + predicted pixels) (= Dice = harmonic mean of precision and recall); NaN if absent.

    Defined whenever the class is not absent, even if precision is undefined (never predicted: F1 = 0).
    """
    cm = _cm(confmat)
    return ratio(2 * cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1) + cm.sum(-2))


def support(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: target pixels (int64)."""
    return _cm(confmat).sum(-1).round().to(torch.int64)


def present(confmat: Tensor | np.ndarray) -> Tensor:
    """Per class: in the target or predicted somewhere (the classes poc59's mIoU averages over)."""
    cm = _cm(confmat)
    return (cm.sum(-1) + cm.sum(-2)) > 0


@metric("miou", "mIoU", "mIoU", metric_convention())
def miou(confmat: Tensor | np.ndarray) -> Tensor | float:
    """poc59's mIoU (see metric_convention); NaN when every class is absent."""
    return _scalar(batched_miou(confmat))


@metric("miou_legacy", "mIoU_legacy", "mIoU, earlier system's convention", LEGACY_CONVENTION)
def miou_legacy(confmat: Tensor | np.ndarray) -> Tensor | float:
    """The earlier system's mIoU (see LEGACY_CONVENTION): absent classes as 0, mean over all C classes."""
    return _scalar(torch.nan_to_num(batched_iou(confmat), nan=0.0).mean(-1))


@metric("pixel_accuracy", "pixel_accuracy", "pixel accuracy", "correct / all non-ignored pixels of the split")
def pixel_accuracy(confmat: Tensor | np.ndarray) -> Tensor | float:
    """Correct / all non-ignored pixels; NaN for an empty matrix."""
    cm = _cm(confmat)
    return _scalar(ratio(cm.diagonal(dim1=-2, dim2=-1).sum(-1), cm.sum((-2, -1))))


@metric("fw_iou", "fwIoU", "frequency-weighted IoU", "per-class IoU weighted by target pixel share")
def fw_iou(confmat: Tensor | np.ndarray) -> Tensor | float:
    """Frequency-weighted IoU: sum over classes of (target pixel share) x IoU; NaN for an empty matrix.

    Classes not in the target weigh 0 (a class in the target always has a defined IoU).
    """
    cm = _cm(confmat)
    total = cm.sum((-2, -1))
    freq = ratio(cm.sum(-1), total.unsqueeze(-1).expand(cm.shape[:-1]))
    weighted = torch.where(freq > 0, freq * batched_iou(cm), torch.zeros_like(freq)).sum(-1)
    return _scalar(torch.where(total > 0, weighted, torch.full_like(weighted, math.nan)))

"""Boundary IoU (Cheng, Girshick, Dollar, Berg, Kirillov, CVPR 2021), per class: the IoU of the pixels
near each mask's contour, the metric for thin damage (cracks, scratches, hair) that a pixel IoU dominated
by large areas barely sees.

For class c of one image, G = target pixels of c and P = predicted pixels of c. The boundary band of a
mask M is the pixels of M within chessboard distance d of a pixel outside M (the image's outside counts as
outside M), d = max(1, round(DILATION_RATIO x image diagonal)), as the paper's reference code erodes with a
3 x 3 kernel d times. The statistic counts, per class, |band(G) & band(P)| and |band(G) | band(P)| over the
pixels whose target is not ignored (ignored pixels are outside G, so a mask's contour runs along them;
they are then left out of both counts, as the confusion matrix leaves them out). Boundary IoU of a split =
the sum of its images' intersections / the sum of their unions; NaN (absent) where the union is empty,
and the mean over the non-absent classes is mBoundaryIoU, as mIoU is of IoU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from poc59.core.classes import IGNORE_INDEX
from poc59.metrics.confusion import mean_over_present, ratio
from poc59.metrics.registry import metric, statistic

__all__ = ["DILATION_RATIO", "band", "boundary_counts", "boundary_iou", "dilation", "mean_boundary_iou"]

DILATION_RATIO = 0.02  # d as a fraction of the image diagonal (the paper's default)


def dilation(height: int, width: int, ratio_of_diagonal: float = DILATION_RATIO) -> int:
    """The band's width d in pixels for an image of `height` x `width`: round(ratio x diagonal), at least 1."""
    return max(1, int(round(ratio_of_diagonal * math.hypot(height, width))))


def band(masks: Tensor, d: int) -> Tensor:
    """bool [N, H, W]: the pixels of `masks` (bool [N, H, W]) within chessboard distance `d` of a pixel
    outside them (the image's outside included): the mask minus its erosion by a (2d + 1)-square, as two
    1-D max-pools of the complement padded with "outside"."""
    outside = (~masks).to(torch.float32).unsqueeze(1)
    outside = F.pad(outside, (d, d, d, d), value=1.0)
    near = F.max_pool2d(F.max_pool2d(outside, (2 * d + 1, 1), stride=1), (1, 2 * d + 1), stride=1)
    return masks & (near.squeeze(1) > 0)


@statistic("boundary", lambda c: (2, c), "per class: boundary-band intersection and union pixels (Boundary IoU)")
def boundary_counts(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, per_image: bool = False
) -> Tensor:
    """int64 ``[B, 2, C]`` (``[2, C]`` summed without `per_image`): per image and class, the boundary bands'
    intersection and union pixels (see the module doc), on the inputs' device, no host sync."""
    if target.ndim == 2:  # a batch of rows: one-pixel-high images
        preds, target = preds.unsqueeze(1), target.unsqueeze(1)
    d = dilation(target.shape[-2], target.shape[-1])
    valid = target != ignore_index
    counts = []
    for c in range(num_classes):  # one class at a time: memory of two masks, whatever the number of classes
        g, p = band(target == c, d), band(preds == c, d)
        counts.append(torch.stack([(g & p & valid).sum((-2, -1)), ((g | p) & valid).sum((-2, -1))], dim=-1))  # [B, 2]
    out = torch.stack(counts, dim=-1).to(torch.int64)  # [B, 2, C]
    return out if per_image else out.sum(0)


@metric(
    "boundary_iou",
    "BoundaryIoU",
    "boundary IoU",
    f"IoU of the pixels within {DILATION_RATIO:g} x the image diagonal of each contour (Cheng et al. 2021)",
    per_class=True,
    needs=("boundary",),
)
def boundary_iou(counts: Tensor) -> Tensor:
    """Per class: boundary intersection / union of counts [..., 2, C] -> [..., C]; NaN when the union is empty."""
    return ratio(counts[..., 0, :], counts[..., 1, :])


@metric(
    "mboundary_iou",
    "mBoundaryIoU",
    "mean boundary IoU",
    "mean of per-class boundary IoU over the classes whose boundary is in the target or the prediction",
    needs=("boundary",),
)
def mean_boundary_iou(counts: Tensor) -> Tensor:
    """Mean boundary IoU over non-absent classes, [..., 2, C] -> [...]; NaN where every class is absent."""
    return mean_over_present(boundary_iou(counts))

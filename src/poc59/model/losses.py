"""Segmentation losses: Dice, Focal, Dice+Focal and weighted cross entropy.

All losses take ``logits [B, C, H, W]`` (any float dtype; the loss is computed
in float32 even under autocast) and ``target [B, H, W]`` (integer labels;
``ignore_index`` = 255 marks pixels outside the object). Definitions, with
``p = softmax(logits)`` over the class dim, ``y`` the target label, ``V`` the
valid (not ignored) pixels and ``w`` the class weights (all ones if None):

- Focal  = mean over V of ``alpha * w[y] * (1 - p_y)^gamma * (-log p_y)``
  (a plain mean over valid pixels: the weights scale terms, they do not
  renormalise the mean).
- Dice   = for each class c present in the batch's valid targets,
  ``dice_c = 1 - (2 sum_V p_c t_c + smooth) / (sum_V p_c + sum_V t_c + smooth)``
  (sums over all valid pixels of the whole batch, ``t`` the one-hot target),
  averaged as ``sum_c w_c dice_c / sum_c w_c`` over present classes only. If
  every present class has weight 0, the unweighted mean over present classes.
- DiceFocal = ``dice_weight * Dice + focal_weight * Focal`` (0.5 / 0.5).
- CE     = torch's weighted cross entropy: ``sum_V w[y] * nll / sum_V w[y]``
  (a weighted mean, normalised by the weights of the valid pixels). If that
  weight sum is 0 the loss is 0.

A batch without valid pixels gives zero, with a gradient path to the
logits, never NaN. No loss synchronises with the host.

``describe()`` returns a plain dict recording the loss that ran; it is stored
in run summaries next to the results.

Any other ``torch.nn.Module`` can be the loss (smp's, torch's): the module calls it
as ``loss(logits, target)`` with the shapes above and ``ignore_index`` in the
target's unlabelled pixels. ``probe`` makes that call on a small batch and says
how a loss fails it (an error, no single finite number, no gradient, or the
unlabelled pixels counted: most third-party losses need ``ignore_index=255``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poc59.core.classes import IGNORE_INDEX
from poc59.core.config import error_text

__all__ = ["CrossEntropyLoss", "DiceFocalLoss", "DiceLoss", "FocalLoss", "LossContractError", "probe"]


def _as_weight_tensor(class_weights: Sequence[float] | Tensor | None) -> Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(
        class_weights.detach().cpu() if isinstance(class_weights, Tensor) else list(class_weights),
        dtype=torch.float32,
    )
    if w.ndim != 1 or w.numel() < 2:
        raise ValueError(f"class_weights must be a 1-D sequence of one weight per class, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"class_weights must be finite and >= 0, got {w.tolist()}")
    return w


class _SegLoss(nn.Module, ABC):
    """Shared parts: class-weight buffer, input checks, describe()."""

    name = "base"

    def __init__(
        self,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        # Non-persistent: moves with .to(device) but is not saved in state_dict
        # (the weights are recorded by describe() and come from the data).
        self.register_buffer("class_weights", _as_weight_tensor(class_weights), persistent=False)

    # -- helpers ---------------------------------------------------------

    def _prepare(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Check shapes; return (float32 log-probabilities, safe target, valid mask, weights).

        The safe target has ignored pixels set to 0 so it can index; they are
        masked out by ``valid`` everywhere. Label values are not checked here:
        that would cost a host sync every step, and the data layer refuses
        labels outside 0..C-1 and 255 before training starts.
        """
        if logits.ndim != 4:
            raise ValueError(f"{type(self).__name__}: logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
        b, c, h, w = logits.shape
        if target.shape != (b, h, w):
            raise ValueError(
                f"{type(self).__name__}: target must be [B, H, W] = {[b, h, w]} to match logits "
                f"{list(logits.shape)}, got {list(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{type(self).__name__}: target must hold integer labels, got dtype {target.dtype}")
        if self.class_weights is not None and self.class_weights.numel() != c:
            raise ValueError(
                f"{type(self).__name__}: {self.class_weights.numel()} class weights but the logits have {c} classes"
            )
        target = target.long()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        weights = (
            self.class_weights.to(device=logits.device, dtype=torch.float32)
            if self.class_weights is not None
            else torch.ones(c, device=logits.device, dtype=torch.float32)
        )
        return F.log_softmax(logits.float(), dim=1), safe, valid, weights

    def _weights_list(self) -> list[float] | None:
        return None if self.class_weights is None else [float(x) for x in self.class_weights.tolist()]

    @abstractmethod
    def describe(self) -> dict:
        """Plain, JSON-serialisable record of this loss (stored in run summaries)."""

    def extra_repr(self) -> str:
        d = self.describe()
        return ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("name", "class", "class_weights"))


def _focal_term(logp: Tensor, safe: Tensor, valid: Tensor, weights: Tensor, alpha: float, gamma: float) -> Tensor:
    logp_y = logp.gather(1, safe.unsqueeze(1)).squeeze(1)  # [B, H, W]
    p_y = logp_y.exp()
    per_pixel = alpha * weights[safe] * (1.0 - p_y).clamp_min(0.0).pow(gamma) * (-logp_y)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)  # 0, with a gradient path, when nothing is valid


def _dice_term(logp: Tensor, safe: Tensor, valid: Tensor, weights: Tensor, smooth: float) -> Tensor:
    """Per-class sums by scatter-add over the target labels: no [B, C, H, W] one-hot is built."""
    c = logp.shape[1]
    prob = logp.exp()
    vf = valid.to(prob.dtype)
    p_y = prob.gather(1, safe.unsqueeze(1)).squeeze(1) * vf  # p of the target class, valid pixels only
    zeros = torch.zeros(c, device=prob.device, dtype=prob.dtype)
    inter = zeros.scatter_add(0, safe.flatten(), p_y.flatten())  # sum p_c t_c
    t_sum = zeros.scatter_add(0, safe.flatten(), vf.flatten())  # sum t_c
    p_sum = (prob * vf.unsqueeze(1)).sum((0, 2, 3))  # sum p_c
    dice = 1.0 - (2.0 * inter + smooth) / (p_sum + t_sum + smooth)  # [C]
    present = (t_sum > 0).to(dice.dtype)
    wp = weights * present
    w_sum = wp.sum()
    weighted = (wp * dice).sum() / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))
    # Fallback when every present class has weight 0: unweighted mean over present classes
    # (also 0 when no class is present, i.e. no valid pixel).
    unweighted = (present * dice).sum() / present.sum().clamp_min(1.0)
    return torch.where(w_sum > 0, weighted, unweighted)


class FocalLoss(_SegLoss):
    """Focal = mean over valid pixels of ``alpha * w[y] * (1 - p_y)^gamma * (-log p_y)``.

    ``p = softmax(logits)``; a plain mean over the valid pixels (weights scale
    each pixel's term, the denominator is the number of valid pixels).
    """

    name = "focal"

    def __init__(
        self,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(class_weights, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp, safe, valid, w = self._prepare(logits, target)
        return _focal_term(logp, safe, valid, w, self.alpha, self.gamma)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "components": {"focal": 1.0},
            "alpha": self.alpha,
            "gamma": self.gamma,
            "ignore_index": self.ignore_index,
            "class_weights": self._weights_list(),
        }


class DiceLoss(_SegLoss):
    """Dice over present classes, weighted: ``sum_c w_c dice_c / sum_c w_c``.

    ``dice_c = 1 - (2 sum p_c t_c + smooth) / (sum p_c + sum t_c + smooth)``,
    sums over all valid pixels of the batch; ``c`` runs over the classes
    present in the batch's valid targets. If all present classes have weight
    0, the unweighted mean over present classes is used.
    """

    name = "dice"

    def __init__(
        self,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 1.0,
    ) -> None:
        super().__init__(class_weights, ignore_index)
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp, safe, valid, w = self._prepare(logits, target)
        return _dice_term(logp, safe, valid, w, self.smooth)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "components": {"dice": 1.0},
            "smooth": self.smooth,
            "ignore_index": self.ignore_index,
            "class_weights": self._weights_list(),
        }


class DiceFocalLoss(_SegLoss):
    """``dice_weight * Dice + focal_weight * Focal`` (defaults 0.5 / 0.5).

    Dice and Focal exactly as in :class:`DiceLoss` and :class:`FocalLoss`,
    sharing the same class weights and ignore label.
    """

    name = "dice_focal"

    def __init__(
        self,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        dice_weight: float = 0.5,
        focal_weight: float = 0.5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__(class_weights, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.dice_weight = float(dice_weight)
        self.focal_weight = float(focal_weight)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp, safe, valid, w = self._prepare(logits, target)
        dice = _dice_term(logp, safe, valid, w, self.smooth)
        focal = _focal_term(logp, safe, valid, w, self.alpha, self.gamma)
        return self.dice_weight * dice + self.focal_weight * focal

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "components": {"dice": self.dice_weight, "focal": self.focal_weight},
            "alpha": self.alpha,
            "gamma": self.gamma,
            "smooth": self.smooth,
            "ignore_index": self.ignore_index,
            "class_weights": self._weights_list(),
        }


class CrossEntropyLoss(_SegLoss):
    """Weighted cross entropy, torch's convention: ``sum_V w[y] * (-log p_y) / sum_V w[y]``.

    A weighted mean over valid pixels ``V`` (normalised by the summed weights
    of the valid pixels' classes, not by the pixel count). If that sum is 0
    (no valid pixels, or all of them in zero-weight classes) the loss is 0.
    """

    name = "ce"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp, safe, valid, w = self._prepare(logits, target)
        nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        pw = torch.where(valid, w[safe], torch.zeros_like(nll))
        num = (pw * nll).sum()
        den = pw.sum()
        return num / torch.where(den > 0, den, torch.ones_like(den))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "components": {"ce": 1.0},
            "reduction": "sum(w[y] * nll) / sum(w[y]) over valid pixels",
            "ignore_index": self.ignore_index,
            "class_weights": self._weights_list(),
        }


class LossContractError(ValueError):
    """A loss that cannot be called as the module calls it (see `probe`); the message says how it fails."""


PROBE_SHAPE = (2, 8, 8)  # batch, height, width of the probe: small, and room for labelled and unlabelled rows


def probe(loss: nn.Module, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Call `loss` as `SegmentationModule` does, on float32 logits [2, C, 8, 8] and an int64 target [2, 8, 8]
    whose first two rows are `ignore_index`; raise LossContractError when it raises, returns anything but
    one finite number with a gradient to the logits, or changes when only the unlabelled pixels' logits
    change (it counts them: a third-party loss usually needs its `ignore_index` set to `ignore_index`)."""
    b, h, w = PROBE_SHAPE
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(b, num_classes, h, w, generator=rng)
    target = torch.randint(0, num_classes, (b, h, w), generator=rng)
    target[:, :2] = ignore_index
    called = f"loss(logits {[b, num_classes, h, w]} float32, target {[b, h, w]} int64 with {ignore_index} unlabelled)"
    try:
        first = loss(logits.requires_grad_(), target)
        elsewhere = logits.detach().clone()
        elsewhere[:, :, :2] = 5 * torch.randn(b, num_classes, 2, w, generator=rng)
        with torch.no_grad():
            second = loss(elsewhere, target)
    except Exception as err:  # any error of the user's loss is its answer to the call
        raise LossContractError(f"{called} fails: {error_text(err)}") from err
    if not isinstance(first, Tensor) or first.numel() != 1 or not first.is_floating_point():
        got = f"a tensor of shape {list(first.shape)}" if isinstance(first, Tensor) else type(first).__name__
        raise LossContractError(f"{called} returns {got}, not one number to minimise (reduction='none'?)")
    if not torch.isfinite(first).all():
        raise LossContractError(f"{called} returns {first.item()}")
    if first.grad_fn is None:
        raise LossContractError(f"{called} returns a number with no gradient to the logits: nothing would train")
    if not torch.allclose(first.detach().float(), second.float(), rtol=1e-5, atol=1e-6):
        raise LossContractError(
            f"{called} changes when only the unlabelled pixels' logits change ({first.item():.6g} -> "
            f"{second.item():.6g}): it counts pixels labelled {ignore_index}, which mark what is not annotated"
        )

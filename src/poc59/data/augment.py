"""Augmentation of whole uint8 batches on the device.

`BatchAugment` is built from the `data.augment` config mapping and called as
`augment(images, masks, generator)` on each training batch (images uint8
[B,3,H,W], masks uint8 [B,H,W], on any device). Every random decision is drawn
on the CPU from `generator` (so a run is deterministic and resumable from the
generator's state), the same number of draws per batch whatever was chosen, and
the decisions cross to the device as one small tensor per batch. Nothing on
the way waits for the device.

Per sample, independently, in this order:

1. **Flips and a 90-degree rotation** (`hflip`, `vflip`, `rot90`): the three
   draws compose into one of the 8 symmetries of the square; the rows drawn for
   each symmetry are gathered, flipped (and transposed) together and put back,
   in uint8 (a batch that drew one symmetry for every row is flipped whole).
   No pixel is interpolated, so labels stay labels and 255 stays 255.
2. **Zoom and crop** (`scale: [min, max]`, chosen with probability `scale_p`):
   a zoom factor s ~ U[min, max] and a random position, as one batched
   `affine_grid`/`grid_sample` over the chosen samples only. s > 1 crops a
   random H/s x W/s window and enlarges it; s < 1 shrinks the whole image into
   a random place of the H x W frame. Image bilinear, mask nearest (labels are
   never interpolated); pixels from outside the source become image 0 and
   mask 255 (ignored). The output size never changes.
3. **Colour jitter** (`colour: {brightness, contrast, saturation, hue}`, chosen
   with probability `colour_p`): factors as in torchvision's ColorJitter
   (brightness 0.2 -> a factor in [0.8, 1.2]; hue h -> a shift in [-h, h] of a
   turn), applied in this fixed order to the image only. All four are linear in
   the pixel, so each sample's jitter is one 3x3 colour matrix plus an offset
   (the contrast term needs the sample's mean grey), applied in float32 and
   rounded back to uint8 once. Hue is a rotation of the chroma plane in YIQ
   (cheap, keeps luma; close to but not identical with torchvision's HSV
   shift), and values are clamped once at the end, not after every step.

Only the chosen samples are converted to float; with `scale` and `colour` off
(or none chosen in a batch) the batch stays uint8 throughout. The inputs are
never modified (unless `inplace=True`); when nothing at all was drawn for a
batch they are returned as they are.

`inplace=True` is for a caller that owns the batch and gives it up (the
datamodule's reused feed buffers): the flips and rotations are then written
back into the inputs row by row instead of into new batch-sized tensors, which
on a CPU would pay page faults on every batch. On a CPU these row copies run in
NumPy, which never waits on a busy intra-op thread pool.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
COLOUR_KEYS = ("brightness", "contrast", "saturation", "hue")
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass(frozen=True)
class BatchAugment:
    """Per-sample flips, 90-degree rotation, zoom/crop and colour jitter of whole uint8 batches.

    hflip, vflip, rot90: probabilities in [0, 1] (rot90 > 0 needs square batches).
    scale: None, or [min, max] zoom factors with 0 < min <= max (e.g. [0.75, 1.25]).
    scale_p: probability that a sample is zoomed (when `scale` is set).
    colour: None, or a mapping with any of brightness, contrast, saturation (a number
        v >= 0 meaning factors in [max(0, 1 - v), 1 + v], or a [min, max] pair) and hue
        (a number h in [0, 0.5] meaning shifts in [-h, h] of a turn, or a pair in [-0.5, 0.5]).
    colour_p: probability that a sample's colour is jittered (when `colour` is set).
    """

    hflip: float = 0.5
    vflip: float = 0.3
    rot90: float = 0.3
    scale: tuple[float, float] | None = None
    scale_p: float = 0.5
    colour: dict[str, tuple[float, float]] | None = None
    colour_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90", "scale_p", "colour_p"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        object.__setattr__(self, "scale", _scale_range(self.scale))
        object.__setattr__(self, "colour", _colour_ranges(self.colour))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> BatchAugment:
        """From the `data.augment` mapping (a dict or an OmegaConf DictConfig); unknown keys are an error."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"data.augment: unknown keys {unknown}; known: {list(cls.__dataclass_fields__)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """The settings, normalised and JSON-ready (for summary.json); `BatchAugment(**to_dict())` rebuilds it."""
        return {
            "hflip": self.hflip,
            "vflip": self.vflip,
            "rot90": self.rot90,
            "scale": list(self.scale) if self.scale is not None else None,
            "scale_p": self.scale_p,
            "colour": {k: list(v) for k, v in self.colour.items()} if self.colour is not None else None,
            "colour_p": self.colour_p,
        }

    describe = to_dict

    # -- the call ------------------------------------------------------------------------------
    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images uint8 [B,C,H,W], masks uint8 [B,H,W] -> the same shapes, dtype and device.

        With `inplace=True` the inputs may be overwritten with the result (use the returned tensors).
        """
        if (
            images.dim() != 4
            or masks.dim() != 3
            or images.shape[0] != masks.shape[0]
            or images.shape[-2:] != masks.shape[-2:]
        ):
            raise ValueError(
                f"expected images [B,C,H,W] and masks [B,H,W], got {tuple(images.shape)} and {tuple(masks.shape)}"
            )
        if images.dtype != torch.uint8 or masks.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images and masks, got {images.dtype} and {masks.dtype}")
        b, c, h, w = images.shape
        if self.rot90 > 0 and h != w:
            raise ValueError(f"rot90 needs square batches, got {h}x{w}; set data.augment.rot90=0")
        if self.colour is not None and c != 3:
            raise ValueError(f"colour jitter needs 3-channel (RGB) images, got {c} channels")
        if b == 0:
            return images, masks
        plan = self._draw(b, generator)
        dev = plan.to(images.device)

        # 1. The symmetries of the square, in uint8: per symmetry drawn, gather its rows, flip (and transpose).
        groups = list(plan.symmetries.items())
        if groups and inplace and _rows_in_place_ok(images, masks):  # CPU: row by row, into the inputs
            arrays, key_of = (images.numpy(), masks.numpy()), {i: key for key, rows in groups for i in rows}
            _symmetry_rows_(arrays, sorted(key_of), key_of)
            owned = True
        elif len(groups) == 1 and len(groups[0][1]) == b:  # one symmetry for the whole batch: no gather
            images, masks = (_symmetry(t, *groups[0][0]) for t in (images, masks))
            owned = True
        elif groups:
            if not inplace:
                images, masks = images.clone(), masks.clone()
            for k, (key, _) in enumerate(groups):
                ids = dev[f"sym{k}"]
                for t in (images, masks):
                    t[ids] = _symmetry(t[ids], *key)
            owned = True
        else:
            owned = False  # still the caller's tensors

        # 2. Zoom/crop and colour, in float32, on the rows chosen for either (only those are converted).
        order = plan.float_rows  # zoomed only, zoomed and coloured, coloured only: each stage sees a slice
        if not order:
            return images, masks
        in_order = order == list(range(b))
        x = (images if in_order else images[dev["float_rows"]]).float()
        n_zoom, first_col = len(plan.zoomed), len(order) - len(plan.coloured)
        if n_zoom:
            grid = zoom_grid(dev["theta"], h, w)
            zoomed = F.grid_sample(x[:n_zoom], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if n_zoom == len(order):
                x = zoomed
            else:
                x[:n_zoom] = zoomed
            # Nearest sampling of (label + 1) with zero padding: 0 marks "from outside the source".
            every = plan.zoomed == list(range(b))
            m = (masks if every else masks[dev["zoomed"]]).unsqueeze(1).float().add_(1)
            m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False).squeeze(1)
            m = m.sub_(1).masked_fill_(m < 0, IGNORE_INDEX).to(torch.uint8)
            if every:
                masks = m
            else:
                masks = masks if owned or inplace else masks.clone()
                masks[dev["zoomed"]] = m
        if plan.coloured:
            xc = x[first_col:]
            y = _jitter(xc, dev["matrix"], dev["offset"], plan.mixes, plan.needs_mean)
            if y is not xc:
                xc.copy_(y)
        x = x.add_(0.5).clamp_(0, 255).to(torch.uint8)  # round half up (every value is >= 0 here)
        if in_order:
            return x, masks
        images = images if owned or inplace else images.clone()
        images[dev["float_rows"]] = x
        return images, masks

    # -- the draws (CPU) -----------------------------------------------------------------------
    def _draw(self, b: int, generator: torch.Generator) -> _Plan:
        """All random decisions for a batch of `b`, on the CPU; how many numbers are drawn depends only on the settings."""
        plan = _Plan()
        u = torch.rand((3, b), generator=generator, dtype=torch.float32)  # the seed's draws, in its layout
        hf, vf, rot = (u[0] < self.hflip).tolist(), (u[1] < self.vflip).tolist(), (u[2] < self.rot90).tolist()
        for i in range(b):
            # hflip, then vflip, then rot90 (= reverse the rows of the transpose) is the same as:
            # transpose, then reverse rows, then reverse columns, with
            key = (rot[i], (not hf[i]) if rot[i] else vf[i], vf[i] if rot[i] else hf[i])
            if any(key):
                plan.symmetries.setdefault(key, []).append(i)
        zoomed: list[int] = []
        coloured: list[int] = []
        if self.scale is not None:
            u = torch.rand((4, b), generator=generator, dtype=torch.float64)
            lo, hi = self.scale
            zoom = lo + (hi - lo) * u[1]
            room = (1 - 1 / zoom).abs()  # how far the window's centre may move (normalised units)
            theta = torch.zeros((b, 2, 3), dtype=torch.float64)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
            theta[:, 0, 2] = (2 * u[2] - 1) * room
            theta[:, 1, 2] = (2 * u[3] - 1) * room
            zoomed = (u[0] < self.scale_p).nonzero().flatten().tolist()
        if self.colour is not None:
            u = torch.rand((5, b), generator=generator, dtype=torch.float64)
            f = {k: lo + (hi - lo) * u[1 + i] for i, (k, (lo, hi)) in enumerate(self.colour.items())}
            matrix, offset = _colour_maps(f["brightness"], f["contrast"], f["saturation"], f["hue"])
            coloured = (u[0] < self.colour_p).nonzero().flatten().tolist()
            plan.mixes = self.colour["saturation"] != (1.0, 1.0) or self.colour["hue"] != (0.0, 0.0)
            plan.needs_mean = self.colour["contrast"] != (1.0, 1.0)
        both = sorted(set(zoomed) & set(coloured))
        plan.zoomed = [i for i in zoomed if i not in both] + both
        plan.coloured = both + [i for i in coloured if i not in both]
        plan.float_rows = plan.zoomed + plan.coloured[len(both) :]
        if plan.zoomed:
            plan.theta = theta[plan.zoomed]
        if plan.coloured:
            plan.matrix, plan.offset = matrix[plan.coloured], offset[plan.coloured]
        return plan


class _Plan:
    """One batch's decisions, drawn on the CPU; `to(device)` moves what the device needs in one copy."""

    def __init__(self) -> None:
        self.symmetries: dict[tuple[bool, bool, bool], list[int]] = {}  # (transpose, flip rows, flip cols) -> rows
        self.zoomed: list[int] = []  # rows to zoom/crop, in the order of theta [n,2,3]
        self.coloured: list[int] = []  # rows to colour, in the order of matrix [n,3,3] and offset [n,3]
        self.float_rows: list[int] = []  # zoomed + coloured, each once: the zoomed first, the coloured last
        self.theta = self.matrix = self.offset = None
        self.mixes = self.needs_mean = False

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Row ids (int64) and float parameters on `device`, moved in one copy."""
        ids = {f"sym{k}": rows for k, rows in enumerate(self.symmetries.values())}
        ids |= {"float_rows": self.float_rows, "zoomed": self.zoomed}
        parts = {k: torch.tensor(v, dtype=torch.float64) for k, v in ids.items()}
        parts |= {
            k: v for k, v in (("theta", self.theta), ("matrix", self.matrix), ("offset", self.offset)) if v is not None
        }
        # float32 carries row ids exactly (< 2**24)
        flat = torch.cat([v.reshape(-1).to(torch.float32) for v in parts.values()]).to(device, non_blocking=True)
        pieces = flat.split([v.numel() for v in parts.values()])
        return {
            k: piece.view(v.shape).long() if k in ids else piece.view(v.shape)
            for (k, v), piece in zip(parts.items(), pieces)
        }


def zoom_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, [n, C, h, w], align_corners=False)` for zoom + shift matrices (no rotation or shear).

    Built elementwise from theta's diagonal and translation: on a CPU the batched matmul inside
    `affine_grid` costs more than the sampling itself, and on a GPU it could run in TF32, which
    would move sampling positions by a fraction of a pixel (and make zoom 1 inexact).
    """
    n = theta.shape[0]
    xs = torch.arange(w, dtype=theta.dtype, device=theta.device).mul_(2 / w).add_(1 / w - 1)  # pixel centres
    ys = torch.arange(h, dtype=theta.dtype, device=theta.device).mul_(2 / h).add_(1 / h - 1)
    gx = theta[:, 0, 0, None, None] * xs.view(1, 1, w) + theta[:, 0, 2, None, None]  # [n,1,w]
    gy = theta[:, 1, 1, None, None] * ys.view(1, h, 1) + theta[:, 1, 2, None, None]  # [n,h,1]
    return torch.stack((gx.expand(n, h, w), gy.expand(n, h, w)), dim=-1)


def _symmetry(t: torch.Tensor, transpose: bool, flip_rows: bool, flip_cols: bool) -> torch.Tensor:
    """Transpose (the last two dims), then reverse rows and/or columns; t [n,...,H,W] -> a new contiguous tensor."""
    if transpose:  # reversing rows after the transpose = reversing columns before it (and vice versa)
        flip_rows, flip_cols = flip_cols, flip_rows
    dims = [-2] * flip_rows + [-1] * flip_cols
    t = t.flip(dims) if dims else t
    # A real transposed copy: a flip of a transposed view would keep transposed strides into later kernels.
    return t.mT.contiguous() if transpose else t


def _rows_in_place_ok(images: torch.Tensor, masks: torch.Tensor) -> bool:
    """Rows can be transformed in place through NumPy: contiguous CPU tensors outside autograd."""
    return all(t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad for t in (images, masks))


def _symmetry_rows_(
    arrays: tuple[np.ndarray, ...], rows: list[int], key_of: dict[int, tuple[bool, bool, bool]]
) -> None:
    """In place, row i of each [B,...,H,W] uint8 array: transpose the last two dims, then reverse rows and/or
    columns, as key_of[i] = (transpose, flip_rows, flip_cols) says.

    Each row goes to a one-row scratch copy (it stays in the CPU cache) and comes back through a strided
    view, so no batch-sized tensor is allocated. Reversing columns alone reverses 8-byte words and then
    swaps the bytes inside each word: 8x fewer strided elements than reversing bytes one by one.
    """
    for a in arrays:
        scratch = np.empty(a[0].shape, a.dtype)
        for i in rows:
            transpose, flip_rows, flip_cols = key_of[i]
            row = a[i]
            if not transpose and flip_cols and a.shape[-1] % 8 == 0:
                src, tmp = row.view(np.uint64), scratch.view(np.uint64)
                np.copyto(tmp, src[..., ::-1, ::-1] if flip_rows else src[..., ::-1])
                tmp.byteswap(inplace=True)
                np.copyto(row, scratch)
                continue
            np.copyto(scratch, row)
            view = np.swapaxes(scratch, -1, -2) if transpose else scratch
            if flip_rows:
                view = view[..., ::-1, :]
            if flip_cols:
                view = view[..., ::-1]
            np.copyto(row, view)


def _jitter(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, mixes: bool, needs_mean: bool) -> torch.Tensor:
    """y = matrix @ x + offset * mean_grey(x) per sample; x float [n,3,H,W] (0..255, may be overwritten), matrix [n,3,3], offset [n,3]."""
    if needs_mean:  # contrast blends with the sample's mean grey
        means = x.mean((2, 3))  # [n,3]; weights as Python numbers: no extra host-to-device copy, no TF32 matmul
        off = offset * sum(wt * means[:, k : k + 1] for k, wt in enumerate(_GREY))
    else:
        off = torch.zeros_like(offset)
    off = off[:, :, None, None]
    if mixes:  # saturation/hue mix the channels: y_i = sum_j a_ij x_j + off_i, elementwise (so never in TF32)
        y = torch.addcmul(off, matrix[:, :, 0, None, None], x[:, 0:1])
        return y.addcmul_(matrix[:, :, 1, None, None], x[:, 1:2]).addcmul_(matrix[:, :, 2, None, None], x[:, 2:3])
    return x.mul_(torch.diagonal(matrix, dim1=1, dim2=2)[:, :, None, None]).add_(off)  # diagonal: in place


def _colour_maps(brightness, contrast, saturation, hue) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample affine colour maps (float64 [B,3,3], [B,3]): y = M x + offset * mean_grey(x).

    brightness b: x -> b x; contrast c: x -> c x + (1 - c) mean_grey; saturation s:
    x -> s x + (1 - s) grey(x); hue: rotate the chroma (I, Q) plane of YIQ by 2*pi*h.
    Composed in that order. The mean grey after brightness is b * mean_grey(x).
    """
    b = brightness.shape[0]
    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    grey = torch.tensor(_GREY, dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    sat = saturation.view(-1, 1, 1) * eye + (1 - saturation).view(-1, 1, 1) * torch.outer(ones, grey)
    yiq = torch.tensor(_YIQ, dtype=torch.float64)
    angle = 2 * math.pi * hue
    rot = eye.clone()
    rot[:, 1, 1] = rot[:, 2, 2] = angle.cos()
    rot[:, 1, 2], rot[:, 2, 1] = -angle.sin(), angle.sin()
    hue_m = torch.where((hue == 0).view(-1, 1, 1), eye, torch.linalg.inv(yiq) @ rot @ yiq)
    hs = hue_m @ sat
    matrix = (contrast * brightness).view(-1, 1, 1) * hs
    offset = ((1 - contrast) * brightness).view(-1, 1) * (hs @ ones)
    return matrix, offset


# -- settings -------------------------------------------------------------------------------------
def _probability(name: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"data.augment.{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _pair(name: str, v: Any) -> tuple[float, float]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2:
        raise ValueError(f"data.augment.{name} must be a [min, max] pair, got {v!r}")
    lo, hi = v
    if any(isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x) for x in (lo, hi)):
        raise ValueError(f"data.augment.{name} must hold two numbers, got {v!r}")
    if lo > hi:
        raise ValueError(f"data.augment.{name}: min {lo} > max {hi}")
    return float(lo), float(hi)


def _scale_range(scale: Any) -> tuple[float, float] | None:
    if scale is None:
        return None
    lo, hi = _pair("scale", list(scale) if isinstance(scale, Sequence) and not isinstance(scale, str) else scale)
    if lo <= 0:
        raise ValueError(f"data.augment.scale: zoom factors must be > 0, got [{lo}, {hi}]")
    return lo, hi


def _colour_ranges(colour: Any) -> dict[str, tuple[float, float]] | None:
    if colour is None:
        return None
    if not isinstance(colour, Mapping):
        raise ValueError(f"data.augment.colour must be a mapping of {list(COLOUR_KEYS)} or null, got {colour!r}")
    unknown = sorted(set(colour) - set(COLOUR_KEYS))
    if unknown:
        raise ValueError(f"data.augment.colour: unknown keys {unknown}; known: {list(COLOUR_KEYS)}")
    out = {}
    for key in COLOUR_KEYS:
        v = colour.get(key)
        name = f"colour.{key}"
        if v is None:
            out[key] = (0.0, 0.0) if key == "hue" else (1.0, 1.0)
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            limit = 0.5 if key == "hue" else math.inf
            if not 0 <= v <= limit:
                raise ValueError(f"data.augment.{name} must be in [0, {limit}], got {v!r}")
            out[key] = (-float(v), float(v)) if key == "hue" else (max(0.0, 1.0 - v), 1.0 + v)
        else:
            lo, hi = _pair(name, list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
            if key == "hue" and not -0.5 <= lo <= hi <= 0.5:
                raise ValueError(f"data.augment.{name} must lie in [-0.5, 0.5], got [{lo}, {hi}]")
            if key != "hue" and lo < 0:
                raise ValueError(f"data.augment.{name} factors must be >= 0, got [{lo}, {hi}]")
            out[key] = (lo, hi)
    return out

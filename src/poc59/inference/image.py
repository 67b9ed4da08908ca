"""A trained model on one full-resolution image, whatever geometry it was trained with.

The scale follows the checkpoint (`TrainedModel.geometry`):
- `resize` / `pad`: the image is brought to the training geometry exactly as the
  data layer does (`poc59.data.decoding.content_size` / `resample_image`, padded
  top-left with 0 for `pad`), one forward pass, and the logits are upsampled
  bilinearly to the original size (then argmax; never nearest on labels).
- `crop` (native scale): sliding-window inference over the full image with the
  training tile (`poc59.inference.tiling`), tiles batched, logits blended. A model
  trained with `max_side` saw its sources shrunk so the long side was at most
  `max_side`: a larger scan is shrunk the same way first (the damage then has the
  size the model learnt), and the blended logits are upsampled back bilinearly.

Where the model needs the scan smaller than it is (resize, pad, a crop model's `max_side`), its pixels come
from `image.at_least(*target)`: a pyramidal TIFF's or a JPEG 2000 file's smallest stored resolution that
still holds the target, so the full resolution is never decoded whole for it.

Both yield logits as bands of rows, top to bottom, so the caller never holds a
full-resolution [C, H, W] float tensor. Flip test-time augmentation averages
the prediction with the mirrored prediction of the mirrored image (exactly
mirror-symmetric for every geometry).

`predict_label_map` is the one call for a label map of an in-memory image
(evaluate's native-resolution mode uses it); `predict` streams files through
`logit_bands`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from poc59.artifacts.trained import TrainedModel
from poc59.core.device import autocast_dtype
from poc59.data.decoding import content_size, resample_image
from poc59.inference.tiling import TileGrid, predict_logits, run_batches, stream_logits

log = logging.getLogger(__name__)

__all__ = ["ArrayImage", "band_labels", "logit_bands", "predict_label_map", "row_upsampler", "streaming_bytes"]

BAND_ROWS = 256  # rows per band when upsampling resize/pad logits to the original size


class ImageRows(Protocol):
    """An image as RGB uint8 rows: `poc59.inference.scans.Scan` (a file, maybe streamed) or `ArrayImage`."""

    width: int
    height: int

    def rows(self, y0: int, y1: int) -> np.ndarray: ...

    def whole(self) -> np.ndarray: ...

    def at_least(self, width: int, height: int) -> np.ndarray: ...


class ArrayImage:
    """An in-memory uint8 [H, W, 3] image as `ImageRows`."""

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
        self.image, self.height, self.width = image, image.shape[0], image.shape[1]

    def rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]

    def whole(self) -> np.ndarray:
        return self.image

    def at_least(self, width: int, height: int) -> np.ndarray:
        """The image itself: it holds one resolution."""
        return self.image


def _hwc_to_chw(rows: np.ndarray) -> torch.Tensor:
    """uint8 [h, W, 3] -> [3, h, W] (a view; Pillow's read-only pixels are copied first, torch needs writable)."""
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy()).permute(2, 0, 1)


def _geometry_logits(
    model: TrainedModel,
    image: Image.Image,
    target: tuple[int, int],
    device: torch.device,
    autocast: torch.dtype | None,
) -> torch.Tensor:
    """Logits [C, h, w] of the image's content resampled to `target` (its content size at the training
    geometry, resize or pad, computed from the full resolution), one forward pass."""
    size = model.image_size
    content = _hwc_to_chw(np.asarray(resample_image(image, target)))
    canvas = torch.zeros((1, 3, size, size), dtype=torch.uint8)  # pad: top-left, the rest image 0, as in training
    canvas[0, :, : target[1], : target[0]] = content
    return run_batches(model.segmenter, canvas, 1, device, autocast)[0, :, : target[1], : target[0]]


def _shrunk(model: TrainedModel, width: int, height: int) -> tuple[int, int] | None:
    """The (width, height) training shrank a source of this size to under `max_side`; None if it kept it."""
    if not model.geometry.get("max_side"):
        return None
    target = content_size(width, height, model.image_size, "crop", model.geometry.get("max_side"))
    return None if target == (width, height) else target


def row_upsampler(logits: torch.Tensor, height: int, width: int) -> Callable[[int, int], torch.Tensor]:
    """(y0, y1) -> rows y0..y1-1 of `logits` [C, h, w] upsampled bilinearly to [C, height, width].

    The same arithmetic as F.interpolate(mode="bilinear", align_corners=False), split into a horizontal
    pass done once ([C, h, width]) and a vertical pass per band, so the full-size tensor never exists.
    """
    h = logits.shape[1]
    wide = F.interpolate(logits[None], size=(h, width), mode="bilinear", align_corners=False)[0]
    scale = torch.tensor(h, dtype=torch.float32) / height

    def rows(y0: int, y1: int) -> torch.Tensor:
        dst = torch.arange(y0, y1, dtype=torch.float32, device=wide.device)
        src = (scale * (dst + 0.5) - 0.5).clamp_min(0)
        i0 = src.long()
        i1 = torch.clamp(i0 + 1, max=h - 1)
        lam = (src - i0)[None, :, None]
        return (1 - lam) * wide[:, i0] + lam * wide[:, i1]

    return rows


def streaming_bytes(
    model: TrainedModel, width: int, height: int, overlap: float, batch_size: int, tta: bool
) -> int | None:
    """The float32 working memory `logit_bands` holds beside the decoded rows of a `width` x `height` image
    when it streams them (a crop model: the tiling's `TileGrid.working_bytes`); None when the model sees
    the whole image at once (resize, pad), which is decoded whole."""
    if model.geometry["policy"] != "crop":
        return None
    grid = TileGrid(height, width, model.image_size, overlap)
    return grid.working_bytes(model.classes.num_classes, batch_size, tta)


def logit_bands(
    model: TrainedModel,
    image: ImageRows,
    overlap: float = 0.25,
    batch_size: int = 8,
    tta: bool = False,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    band_rows: int = BAND_ROWS,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Logits of the image at its own size, as bands (y0, [C, h, W]) from top to bottom (on `device`)."""
    device = torch.device(device)
    policy = model.geometry["policy"]
    target = _shrunk(model, image.width, image.height) if policy == "crop" else None
    if target is not None:  # the smallest stored resolution that still holds the shrunk size
        small = _hwc_to_chw(np.asarray(resample_image(Image.fromarray(image.at_least(*target)), target)))
        logits = predict_logits(model.segmenter, small, model.image_size, overlap, batch_size, tta, device, autocast)
        upsample = row_upsampler(logits, image.height, image.width)
        for y0 in range(0, image.height, band_rows):
            yield y0, upsample(y0, min(y0 + band_rows, image.height))
        return
    if policy == "crop":
        yield from stream_logits(
            model.segmenter,
            lambda y0, y1: _hwc_to_chw(image.rows(y0, y1)),
            image.height,
            image.width,
            model.image_size,
            overlap,
            batch_size,
            tta,
            device,
            autocast,
        )
        return
    if policy not in ("resize", "pad"):
        raise ValueError(f"{model.source}: unknown geometry policy {policy!r} (resize, pad or crop)")
    target = content_size(image.width, image.height, model.image_size, policy, model.geometry.get("max_side"))
    pil = Image.fromarray(image.at_least(*target))  # a pyramid's reduced level when one holds the target
    upsample = [row_upsampler(_geometry_logits(model, pil, target, device, autocast), image.height, image.width)]
    if tta:  # the same computation on the mirrored image, mirrored back: exactly symmetric
        flipped = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        logits = _geometry_logits(model, flipped, target, device, autocast)
        upsample.append(row_upsampler(logits, image.height, image.width))
    for y0 in range(0, image.height, band_rows):
        y1 = min(y0 + band_rows, image.height)
        band = upsample[0](y0, y1)
        if tta:
            band = (band + upsample[1](y0, y1).flip(-1)) / 2
        yield y0, band


def band_labels(logits: torch.Tensor) -> np.ndarray:
    """argmax over classes of [C, h, W] as uint8 [h, W] (first class wins ties, as argmax; ~3x faster on CPU)."""
    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        higher = logits[c] > best
        best = torch.where(higher, logits[c], best)
        labels.masked_fill_(higher, c)
    return labels.cpu().numpy()


def predict_label_map(
    model: TrainedModel,
    image: np.ndarray,
    overlap: float = 0.25,
    batch_size: int = 8,
    tta: bool = False,
    device: torch.device | str | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Class ids uint8 [H, W] for one RGB uint8 image [H, W, 3] at its own size, for every training geometry.

    `device=None` uses the device the model's weights are on (CPU for exported ONNX models).
    """
    source = ArrayImage(image)
    if device is None:
        tensors = model.segmenter.state_dict().values() if isinstance(model.segmenter, torch.nn.Module) else ()
        device = next(iter(tensors), torch.empty(0)).device
    device = torch.device(device)
    labels = np.empty((source.height, source.width), np.uint8)
    for y0, band in logit_bands(model, source, overlap, batch_size, tta, device, autocast_dtype(precision, device)):
        labels[y0 : y0 + band.shape[1]] = band_labels(band)
    return labels

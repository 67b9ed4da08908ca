"""Decode and resize every pair once into two contiguous uint8 tensors.

Images become [N, 3, S, S] uint8 and masks [N, S, S] uint8: 4 bytes per pixel,
never float copies of full-resolution images. Decoding runs in threads (Pillow
releases the GIL while decoding and resizing) writing straight into the
preallocated tensors, so peak memory is the result plus one image per thread.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from poc59.data.sources import DataError, Sample

log = logging.getLogger(__name__)


@dataclass
class Preloaded:
    """The decoded set: images [N,3,S,S] uint8, masks [N,S,S] uint8 (255 = ignore)."""

    images: torch.Tensor
    masks: torch.Tensor
    seconds: float

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes


def _open(path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except Exception as err:  # Pillow raises many types for bad files
        raise DataError(f"cannot read {path}: {err}. Replace or remove the file (and its partner).") from err
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray((arr * (255.0 / peak)).round().astype(np.uint8), "L")
    return img.convert("RGB")


def _mask_array(img: Image.Image, path) -> np.ndarray:
    if img.mode == "P":  # palette PNG: the indices are the labels, not the colours
        return np.asarray(img)
    if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(
            f"{path}: mask mode {img.mode!r} is not a single-channel label map; "
            "masks must hold class ids (grayscale or palette PNG), not colours"
        )
    arr = np.asarray(img)
    if arr.max(initial=0) > 255:
        raise DataError(f"{path}: label {int(arr.max())} does not fit uint8; labels are class ids 0..C-1 and 255")
    return arr.astype(np.uint8, copy=False)


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, path) -> None:
    """Every label must be a class id or the ignore id (255 is never remapped into a class)."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"{path}: labels {bad.tolist()} are outside 0..{num_classes - 1} and {ignore_index} (ignore). "
            f"Fix the mask, or list {int(bad.max()) + 1}+ class names in ROOT/classes.json"
        )


def load_pair(sample: Sample, size: int, num_classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """One pair at size x size: image antialiased (bilinear with reduction), mask nearest."""
    image = _open(sample.image)
    mask = _open(sample.mask)
    if image.size != mask.size:
        raise DataError(
            f"size mismatch: {sample.image} is {image.size[0]}x{image.size[1]} but "
            f"{sample.mask} is {mask.size[0]}x{mask.size[1]}; an image and its mask must match"
        )
    labels = _mask_array(mask, sample.mask)
    check_labels(labels, num_classes, ignore_index, sample.mask)
    rgb = _to_rgb(image).resize((size, size), Image.BILINEAR, reducing_gap=None)
    lab = Image.fromarray(labels, "L").resize((size, size), Image.NEAREST)
    return np.asarray(rgb), np.asarray(lab)


def preload(
    samples: list[Sample], size: int, num_classes: int, ignore_index: int = 255, workers: int | None = None
) -> Preloaded:
    """Decode all pairs into uint8 tensors, in parallel threads."""
    start = time.perf_counter()
    n = len(samples)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    masks = torch.empty((n, size, size), dtype=torch.uint8)

    def fill(i: int) -> None:
        rgb, lab = load_pair(samples[i], size, num_classes, ignore_index)
        images[i].numpy()[...] = rgb.transpose(2, 0, 1)  # straight into the shared tensor
        masks[i].numpy()[...] = lab

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(fill, range(n)))
    seconds = time.perf_counter() - start
    result = Preloaded(images, masks, seconds)
    log.info("Preloaded %d image/mask pairs at %d px in %.1f s (%.1f MB uint8)", n, size, seconds, result.nbytes / 1e6)
    return result

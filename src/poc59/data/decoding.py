"""Reading one image/mask pair into uint8 arrays, as training stores it, and checking a set before decoding.

Images are read as RGB (16/32-bit grayscale scaled to 8 bits by its peak), masks as single-channel label
maps (palette indices are labels, not colours) whose every value is a class id or the ignore id. Geometry
(`policy`, see `poc59.data.preload`): `resize` to S x S, `pad` with the aspect kept on an S x S canvas,
`crop` at native scale capped at `max_side`. Images are resampled bilinearly over the whole footprint
(antialiased), masks with nearest neighbour, so labels and 255 survive unchanged. `scan` reads only the
headers: bad pairs are found before anything is allocated.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from poc59.core.pixels import over_limit
from poc59.data.masks import remap_lut
from poc59.data.regions import NotInRegions, RegionError, handles, open_raster, scale_to_8bit
from poc59.data.sources import DataError, Sample

log = logging.getLogger(__name__)

POLICIES = ("resize", "pad", "crop")


# -- one pair --------------------------------------------------------------------------


def read_ahead(sample: Sample) -> None:
    """Ask the kernel to start reading a pair's files now (on a cold page cache the decoders then wait less)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in (sample.image, sample.mask):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError:
            pass  # only a hint; reading the file later reports any real problem


def _open(path: Path, load: bool = True) -> Image.Image:
    try:
        img = Image.open(path)
        if load:
            img.load()
    except Exception as err:  # Pillow raises many types for bad files
        raise DataError(f"cannot read {path}: {err}. Replace or remove the file (and its partner).") from err
    return img


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # wider than 8 bits: scaled so the image's peak becomes 255


def wide_to_8bit(img: Image.Image, peak: float | None = None) -> Image.Image:
    """A 16/32-bit grayscale image as 8-bit "L", scaled by `peak` (default: its own maximum); others unchanged."""
    if img.mode not in WIDE_MODES:
        return img
    arr = np.asarray(img)
    return Image.fromarray(scale_to_8bit(arr, float(arr.max()) if peak is None else peak), "L")


def _read_image(path: Path) -> Image.Image:
    """An image's pixels as stored, 8 bits a sample: TIFF and JPEG 2000 through `poc59.data.regions` (the
    reader predict streams them with), any other file, or a TIFF layout that reader leaves to Pillow,
    through Pillow (16/32-bit grayscale then scaled by `_to_rgb`)."""
    if handles(path):
        try:
            with open_raster(path) as raster:
                return raster.whole()
        except NotInRegions:
            pass  # Pillow reads this layout, as it always has
        except RegionError as err:
            raise DataError(f"{err} (and its partner)") from None
    return _open(path)


def _to_rgb(img: Image.Image) -> Image.Image:
    img = wide_to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() to the same mode would copy


def content_size(width: int, height: int, size: int, policy: str, max_side: int | None) -> tuple[int, int]:
    """(width, height) an image of `width` x `height` is resampled to under the geometry (before padding)."""
    if policy == "resize":
        return size, size
    cap = size if policy == "pad" else max_side
    scale = cap / max(width, height) if policy == "pad" else min(1.0, cap / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resample_image(rgb: Image.Image, target: tuple[int, int]) -> Image.Image:
    """The image resampled as training does: bilinear over the whole footprint (antialiased)."""
    return rgb if rgb.size == target else rgb.resize(target, Image.BILINEAR, reducing_gap=None)


def _mask_array(img: Image.Image, path: Path) -> np.ndarray:
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


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Every label must be a class id or the ignore id (255 is never remapped into a class)."""
    if ignore_index == 255 and mask.dtype == np.uint8 and mask.size:
        # 0..C-1 -> 1..C and 255 -> 0 (uint8 wraps): one vectorised pass instead of sorting for np.unique
        if int((mask + np.uint8(1)).max()) <= num_classes:
            return
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"{path}: labels {bad.tolist()} are outside 0..{num_classes - 1} and {ignore_index} (ignore). "
            f"Fix the mask, or list {int(bad.max()) + 1}+ class names in ROOT/classes.json"
        )


def canvas_side(policy: str, size: int, max_side: int | None) -> int:
    """Side of the square each sample is stored on."""
    if policy not in POLICIES:
        raise ValueError(f"data.policy={policy!r} is not one of {POLICIES}")
    if policy != "crop":
        return size
    if not max_side or max_side < size:
        raise ValueError(f"data.policy=crop needs data.max_side >= data.image_size ({size}), got {max_side}")
    return math.ceil(max_side / size) * size


def load_pair(
    sample: Sample,
    size: int,
    num_classes: int,
    ignore_index: int,
    policy: str = "resize",
    max_side: int | None = None,
    mask_remap: Mapping[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """One pair on its canvas: (image HxWx3, mask HxW, (content height, content width)).

    Images are resampled with antialiasing (bilinear over the whole footprint),
    masks with nearest neighbour, so labels and 255 survive unchanged. `mask_remap`: see `poc59.data.masks`.
    """
    lut = remap_lut(mask_remap, num_classes, ignore_index)
    image, mask, hw = decode_pair(sample, size, num_classes, ignore_index, policy, max_side, lut=lut)
    return np.require(image, requirements="CW"), np.require(mask, requirements="CW"), hw


def _read_mask(path: Path, lut: np.ndarray | None) -> np.ndarray:
    """A mask's labels [H, W] uint8 as stored, mapped through `lut` (data.mask_remap) when given."""
    labels = _mask_array(_open(path), path)
    return labels if lut is None else lut[labels]


def _read_pair(
    sample: Sample, num_classes: int, ignore_index: int, lut: np.ndarray | None = None
) -> tuple[Image.Image, np.ndarray]:
    """The checked pair as stored: (RGB image, labels [H, W] uint8, mapped through `lut` when given)."""
    image = _read_image(sample.image)
    mask = _open(sample.mask)
    if image.size != mask.size:
        raise DataError(
            f"size mismatch: {sample.image} is {image.size[0]}x{image.size[1]} but "
            f"{sample.mask} is {mask.size[0]}x{mask.size[1]}; an image and its mask must match"
        )
    labels = _mask_array(mask, sample.mask)
    if lut is not None:
        labels = lut[labels]
    check_labels(labels, num_classes, ignore_index, sample.mask)
    return _to_rgb(image), labels


def load_native(
    sample: Sample, num_classes: int, ignore_index: int, mask_remap: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One pair at its stored resolution: (image [H, W, 3] uint8, mask [H, W] uint8), read and checked as
    training reads it (with the run's `mask_remap`, see `poc59.data.masks`)."""
    rgb, labels = _read_pair(sample, num_classes, ignore_index, remap_lut(mask_remap, num_classes, ignore_index))
    return np.asarray(rgb), labels


def decode_pair(
    sample: Sample,
    size: int,
    num_classes: int,
    ignore_index: int,
    policy: str,
    max_side: int | None,
    canvas: bool = True,
    lut: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """`load_pair` without its copies: the arrays may be read-only views of Pillow's pixels
    (`canvas=False`: the content alone, as the ragged layout stores it)."""
    rgb, labels = _read_pair(sample, num_classes, ignore_index, lut)
    lab = Image.fromarray(labels, "L")
    target = content_size(*rgb.size, size, policy, max_side)
    if target != rgb.size:
        rgb = resample_image(rgb, target)
        lab = lab.resize(target, Image.NEAREST)
    side = canvas_side(policy, size, max_side)
    w, h = target
    if (w, h) == (side, side) or not canvas:  # the content fills the canvas (always with `resize`)
        return np.asarray(rgb), np.asarray(lab), (h, w)
    img_out = np.zeros((side, side, 3), np.uint8)
    mask_out = np.full((side, side), ignore_index, np.uint8)
    img_out[:h, :w] = np.asarray(rgb)
    mask_out[:h, :w] = np.asarray(lab)
    return img_out, mask_out, (h, w)


def mask_label_totals(samples: list[Sample], lut: np.ndarray | None = None, workers: int | None = None) -> np.ndarray:
    """Pixels per label value (256) over the masks of `samples` as stored (mapped through `lut`), reading the
    masks only; a mask that cannot be read is passed over (the preload names it)."""

    def count(sample: Sample) -> np.ndarray:
        try:
            return np.bincount(_read_mask(sample.mask, lut).reshape(-1), minlength=256)
        except DataError:
            return np.zeros(256, np.int64)

    totals = np.zeros(256, np.int64)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for counts in pool.map(count, samples):
            totals += counts
    return totals


# -- validation before any work ----------------------------------------------------------------


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the header: PNGs read directly (24 bytes), TIFF and JPEG 2000 through the reader
    that decodes them (`_read_image`), anything else through Pillow."""
    if handles(path):
        try:
            with open_raster(path) as raster:
                return raster.width, raster.height
        except NotInRegions:
            pass
        except RegionError as err:
            raise DataError(f"{err} (and its partner)") from None
    try:
        with path.open("rb") as f:
            head = f.read(24)
        if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    except OSError:
        pass  # Pillow says what is wrong, in its words
    with _open(path, load=False) as img:
        return img.size


def scan(
    samples: list[Sample], on_bad_file: str = "error"
) -> tuple[list[Sample], list[dict], int, list[tuple[int, int]]]:
    """Read every header (not the pixels): unreadable files, size mismatches and images over Pillow's
    decompression-bomb limit (`poc59.core.pixels`), before anything is allocated. Returns the good pairs,
    the skipped ones, the pixels of the largest image (what one decoding thread holds at once), and each
    good pair's (width, height)."""
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"data.on_bad_file={on_bad_file!r} must be 'error' or 'skip'")
    good, skipped, largest, dims = [], [], 0, []
    for s in samples:
        try:
            (iw, ih), (mw, mh) = _size(s.image), _size(s.mask)
            if (iw, ih) != (mw, mh):
                raise DataError(
                    f"size mismatch: {s.image} is {iw}x{ih} but {s.mask} is {mw}x{mh}; an image and its mask must match"
                )
            limit = over_limit(iw, ih)
            if limit is not None:
                raise DataError(
                    f"{s.image} is {iw}x{ih} = {iw * ih / 1e6:.0f} MP, over Pillow's decompression-bomb limit of "
                    f"{limit / 1e6:.0f} MP: if it is a real scan, set data.allow_large_images=true"
                )
        except DataError as err:
            if on_bad_file == "error":
                raise
            skipped.append({"id": s.id, "image": str(s.image), "mask": str(s.mask), "reason": str(err)})
            log.warning("Skipping %s: %s", s.id, err)
            continue
        good.append(s)
        dims.append((iw, ih))
        largest = max(largest, iw * ih)
    return good, skipped, largest, dims


def check_memory(nbytes: int, what: str) -> None:
    """Stop before allocating what the machine cannot hold, and say which knob to turn."""
    available = psutil.virtual_memory().available
    if nbytes > 0.9 * available:
        raise DataError(
            f"{what} needs {nbytes / 2**30:.1f} GiB of RAM but only {available / 2**30:.1f} GiB is available. "
            "Lower data.image_size (or data.max_side for policy=crop), drop stored copies with "
            "data.use_aug_copies=false, or run on a node with more memory."
        )

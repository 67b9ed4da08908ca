"""Decode every pair once into two contiguous uint8 tensors, and cache them on disk.

Images become [N, 3, S, S] uint8 and masks [N, S, S] uint8 (`crop`: each image at
its own size, one after another, see below): 4 bytes per pixel, never float
copies of full-resolution images. Decoding runs in threads (Pillow
releases the GIL while decoding and resizing) writing straight into the
preallocated tensors, so peak memory is the result plus one image per thread.

The result is cached (`cache_dir/preload-<key>/`), keyed by the files' names,
sizes and modification times, the geometry and the class count: the next run
maps the cache into memory instead of decoding. The cache is written to a
temporary folder and renamed into place, so a crash or a concurrent run never
leaves a half-written cache that looks complete; a damaged one is rebuilt.
With a cache folder each decoding thread also writes its sample to the cache
files as soon as it is decoded, and a background thread hands them to the disk
while decoding goes on, so writing the cache adds little to a cold start.

Each sample's label histogram (pixels per label value of its stored mask) is
kept with the cache, so the split's stratification never rereads the masks.

Geometry (`policy`):
- `resize`: the whole image to S x S (aspect not kept).
- `pad`:    scaled so the long side is S, aspect kept, placed top-left on an
            S x S canvas; the rest is image 0 / mask 255 (ignored).
- `crop`:   native scale, capped so the long side is at most `max_side`, stored
            ragged: no canvas, each image's [3, h, w] block (and its [h, w] mask)
            one after another in one flat buffer, sample i at pixel offset
            `offsets[i]` (the running sum of h x w), so a set of mixed sizes costs
            its content's bytes, not N canvases of the largest. Training takes
            random S x S windows, validation tiles it; a window past an image's
            content is padded with image 0 / mask 255 in the batch only
            (`Preloaded.window_into`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
import xxhash
from PIL import Image

from poc59.core.atomic import write_json
from poc59.core.locks import alive
from poc59.core.pixels import over_limit
from poc59.core.progress import Steps
from poc59.data.masks import remap_lut
from poc59.data.sources import DataError, Sample
from poc59.data.storage import copy_window, image_view, mask_view

log = logging.getLogger(__name__)

POLICIES = ("resize", "pad", "crop")
# Cache format per layout: 2, every byte hashed (xxh3-128) when written and checked when mapped; 3, crop
# stored ragged. Only crop's caches changed: a resize/pad cache of version 2 is still used as it is.
CACHE_VERSIONS = {"dense": 2, "ragged": 3}


def cache_version(policy: str) -> int:
    return CACHE_VERSIONS["ragged" if policy == "crop" else "dense"]


_HASH_CHUNK = 1 << 24  # bytes read at a time while hashing a cache file
_STALE_SECONDS = 3600  # another machine's temporary cache folder untouched this long belongs to a dead writer
_READ_AHEAD = 32  # pairs whose files the kernel is asked to read ahead of the decoding threads
_FLUSH_SECONDS = 0.5  # while decoding into the cache files, hand what is written so far to the disk this often


@dataclass
class Preloaded:
    """The decoded set: images [N,3,H,W] uint8, masks [N,H,W] uint8 (255 = ignore), or, ragged
    (`offsets` set, policy=crop), flat images [3 x P] and masks [P] holding each sample's content only.

    `sizes` [N,2] holds each sample's (height, width) of real content (on a canvas the rest is padding,
    label 255); `offsets` [N] each ragged sample's first pixel (its image block starts at 3 x that);
    `samples` are the pairs kept, in tensor order; `skipped` lists files left out under
    `on_bad_file=skip`; `label_counts` [N,256] int64 holds each stored mask's pixels per label value
    (None for a cache written before it was kept). Read samples with `image(i)`, `mask(i)` and
    `window_into`, which work in both layouts.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    source: str = "decoded"  # or "cache"
    key: str = ""
    label_counts: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    @property
    def ragged(self) -> bool:
        return self.offsets is not None

    def image(self, i: int) -> torch.Tensor:
        """Sample i's image content [3, h, w] (a view; no canvas padding)."""
        return image_view(self.images, self.sizes, self.offsets, i)

    def mask(self, i: int) -> torch.Tensor:
        """Sample i's mask content [h, w] (a view)."""
        return mask_view(self.masks, self.sizes, self.offsets, i)

    def window_into(
        self, i: int, y: int, x: int, image_out: torch.Tensor, mask_out: torch.Tensor, ignore_index: int = 255
    ) -> None:
        """Copy the window of sample i at (y, x), of `mask_out`'s size, into the buffers (see copy_window)."""
        copy_window(self.image(i), self.mask(i), y, x, image_out, mask_out, ignore_index)


# -- reading one pair --------------------------------------------------------------------------


def _read_ahead(sample: Sample) -> None:
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
    arr = np.asarray(img, dtype=np.float64)
    if peak is None:
        peak = arr.max()
    peak = peak if peak > 0 else 1.0
    return Image.fromarray((arr * (255.0 / peak)).round().astype(np.uint8), "L")


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
    image, mask, hw = _load_pair(sample, size, num_classes, ignore_index, policy, max_side, lut=lut)
    return np.require(image, requirements="CW"), np.require(mask, requirements="CW"), hw


def _read_mask(path: Path, lut: np.ndarray | None) -> np.ndarray:
    """A mask's labels [H, W] uint8 as stored, mapped through `lut` (data.mask_remap) when given."""
    labels = _mask_array(_open(path), path)
    return labels if lut is None else lut[labels]


def _read_pair(
    sample: Sample, num_classes: int, ignore_index: int, lut: np.ndarray | None = None
) -> tuple[Image.Image, np.ndarray]:
    """The checked pair as stored: (RGB image, labels [H, W] uint8, mapped through `lut` when given)."""
    image = _open(sample.image)
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


def _load_pair(
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
    """(width, height) from the header: PNGs read directly (24 bytes), anything else through Pillow."""
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


# -- the cache ---------------------------------------------------------------------------------


def cache_key(
    samples: list[Sample],
    size: int,
    policy: str,
    max_side: int | None,
    num_classes: int,
    on_bad_file: str,
    mask_remap: Mapping[int, int] | None = None,
) -> str:
    """Changes whenever any file's name, size or modification time, the geometry, or the mask remap changes."""
    limit = Image.MAX_IMAGE_PIXELS  # lifted by data.allow_large_images: which pairs are kept may differ
    version = cache_version(policy)
    # the remap only when there is one: the keys of caches written without it stay valid
    remap = f"|remap={sorted(mask_remap.items())}" if mask_remap else ""
    h = hashlib.sha256(f"v{version}|{size}|{policy}|{max_side}|{num_classes}|{on_bad_file}|{limit}{remap}\n".encode())
    for s in samples:
        for p in (s.image, s.mask):
            st = p.stat()
            h.update(f"{s.id}\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def content_hash(path: Path) -> str:
    """xxh3-128 of every byte of a file (about 10 GB/s: a warm start's check costs a fraction of a second
    per GB, read from the page cache the mapped tensors use next anyway)."""
    h = xxhash.xxh3_128()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def _pwrite(fd: int, arr: np.ndarray, offset: int) -> None:
    """All of a contiguous array's bytes at `offset` (the GIL is released while writing)."""
    view = memoryview(np.ascontiguousarray(arr)).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _write_tensor(path: Path, t: torch.Tensor) -> None:
    flat = t.numpy().reshape(-1).view(np.uint8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        step = 1 << 24  # pwrite in 16 MiB pieces: numpy's tofile is several times slower
        for start in range(0, flat.size, step):
            _pwrite(fd, flat[start : start + step], start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta(data: Preloaded, folder: Path) -> dict:
    names = ("images.u8", "masks.u8") + (("labels.i64",) if data.label_counts is not None else ())
    meta = {
        "version": CACHE_VERSIONS["ragged" if data.ragged else "dense"],
        "key": data.key,
        "images_shape": list(data.images.shape),
        "masks_shape": list(data.masks.shape),
        "sizes": data.sizes.tolist(),
        "ragged": data.ragged,  # offsets: the running sum of the sizes' h x w
        "ids": [s.id for s in data.samples],
        "skipped": data.skipped,
        "check": {name: content_hash(folder / name) for name in names},
    }
    if data.label_counts is not None:
        meta["labels_shape"] = list(data.label_counts.shape)
    return meta


def _publish(tmp: Path, folder: Path, data: Preloaded) -> None:
    """Rename a complete temporary cache folder into place (a concurrent writer's valid copy wins harmlessly)."""
    try:
        os.rename(tmp, folder)
    except OSError:  # another run renamed its copy first (or a stale one is in the way)
        if load_cache(folder, data.samples, data.key) is None:
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(tmp, folder)


class _CacheWriter:
    """Writes each decoded sample into preallocated cache files while the others are still decoding.

    A background thread hands what is written so far to the disk (fdatasync) every `_FLUSH_SECONDS`,
    so the final fsync has little left to wait for. Any failure only turns caching off.
    """

    def __init__(self, tmp: Path) -> None:
        self.paths = (tmp / "images.u8", tmp / "masks.u8")
        self.fds: list[int] = []
        self.error: OSError | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def open(self, image_bytes: int, mask_bytes: int) -> None:
        try:
            for path, size in zip(self.paths, (image_bytes, mask_bytes)):
                self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))
                os.ftruncate(self.fds[-1], size)  # a full disk shows as a failed write, which turns caching off
        except OSError as err:
            self.error = err
            return
        self._flusher = threading.Thread(target=self._flush_loop, name="preload-cache-flush", daemon=True)
        self._flusher.start()

    def write(self, at: tuple[int, int], image: np.ndarray, mask: np.ndarray) -> None:
        """One sample's image and mask bytes at their byte offsets `at` in the two files."""
        if self.error is not None or not self.fds:
            return
        try:
            _pwrite(self.fds[0], image, at[0])
            _pwrite(self.fds[1], mask, at[1])
        except OSError as err:
            self.error = err

    def _flush_loop(self) -> None:
        while not self._stop.wait(_FLUSH_SECONDS):
            try:
                for fd in self.fds:
                    os.fdatasync(fd)
            except OSError:
                return

    def close(self, sync: bool) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            if sync and self.error is None:
                for fd in self.fds:
                    os.fsync(fd)
        except OSError as err:
            self.error = err
        finally:
            for fd in self.fds:
                os.close(fd)
            self.fds = []


def save_cache(folder: Path, data: Preloaded) -> None:
    """Write the cache next to its final place, then rename it in (a concurrent writer's copy wins harmlessly)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if data.nbytes > free:
        log.warning(
            "Not caching the preload: it needs %.1f GB but %s has %.1f GB free",
            data.nbytes / 1e9,
            folder.parent,
            free / 1e9,
        )
        return
    tmp = _tmp_folder(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_tensor(tmp / "images.u8", data.images)
        _write_tensor(tmp / "masks.u8", data.masks)
        if data.label_counts is not None:
            _write_tensor(tmp / "labels.i64", data.label_counts)
        write_json(tmp / "meta.json", _meta(data, tmp))
        _publish(tmp, folder, data)
    except OSError as err:
        log.warning("Could not write the preload cache to %s (%s); training goes on without it", folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_folder(folder: Path) -> Path:
    """This process's temporary cache folder: `.preload-<key>.tmp-<host>-<pid>`, so that a later start can
    tell a dead writer's leftovers (`remove_dead_writers`) from a live one's."""
    return folder.with_name(f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def remove_dead_writers(cache_dir: Path) -> list[Path]:
    """Remove temporary cache folders whose writer is gone (killed mid-write): on this machine, those of a
    process that no longer runs; of another machine (a shared filesystem), those untouched for an hour.
    A live writer's folder is left alone. Returns what was removed (each is logged)."""
    removed = []
    host = socket.gethostname()
    for tmp in sorted(cache_dir.glob(".preload-*.tmp-*")) if cache_dir.is_dir() else ():
        owner, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")
        try:
            if owner == host:
                dead = not alive(int(pid))
            else:  # another machine's writer (or an older poc59's `.tmp-<pid>`): judged by its last write
                newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
                dead = time.time() - newest > _STALE_SECONDS
        except (OSError, ValueError):
            continue  # gone meanwhile, or not a name poc59 writes
        if dead:
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("Removed %s: the temporary cache of a preload that was killed while writing it", tmp)
            removed.append(tmp)
    return removed


def load_cache(folder: Path, samples: list[Sample], key: str, verify: bool = True) -> Preloaded | None:
    """Map a cache into memory, or None if it is missing, stale or damaged (every byte is checked against
    the hash written with it; `verify=False` only for a cache this process has just written and hashed)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    start = time.perf_counter()
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSIONS["ragged" if meta.get("ragged") else "dense"] or meta.get("key") != key:
            return None
        tensors = []
        files = [("images.u8", meta["images_shape"], torch.uint8), ("masks.u8", meta["masks_shape"], torch.uint8)]
        if "labels.i64" in meta["check"]:  # absent from caches written before label counts were kept
            files.append(("labels.i64", meta["labels_shape"], torch.int64))
        for name, shape, dtype in files:
            path = folder / name
            nbytes = math.prod(shape) * dtype.itemsize
            if path.stat().st_size != nbytes or (verify and content_hash(path) != meta["check"][name]):
                log.warning("Preload cache %s is damaged (%s differs from its hash); rebuilding it", folder, name)
                return None
            if dtype == torch.uint8:  # mapped (copy-on-write): pages are read when first used
                tensors.append(
                    torch.from_file(str(path), shared=False, size=math.prod(shape), dtype=dtype).view(*shape)
                )
            else:
                tensors.append(torch.from_numpy(np.fromfile(path, dtype=np.int64)).view(*shape))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        log.warning("Preload cache %s is unreadable (%s); rebuilding it", folder, err)
        return None
    by_id = {s.id: s for s in samples}
    kept = [by_id[i] for i in meta["ids"] if i in by_id]
    if len(kept) != len(meta["ids"]):
        return None
    sizes = torch.tensor(meta["sizes"], dtype=torch.int64).view(-1, 2)
    pixels = sizes.prod(1)
    return Preloaded(
        tensors[0],
        tensors[1],
        sizes,
        kept,
        meta["skipped"],
        time.perf_counter() - start,
        "cache",
        key,
        tensors[2] if len(tensors) > 2 else None,
        offsets=torch.cumsum(pixels, 0) - pixels if meta.get("ragged") else None,
    )


# -- the whole set -----------------------------------------------------------------------------


def decode(
    samples: list[Sample],
    size: int,
    num_classes: int,
    ignore_index: int = 255,
    policy: str = "resize",
    max_side: int | None = None,
    on_bad_file: str = "error",
    workers: int | None = None,
    *,
    writer: _CacheWriter | None = None,
    lut: np.ndarray | None = None,
) -> Preloaded:
    """Decode all pairs into uint8 tensors, in parallel threads; bad pairs raise, or are skipped and listed.

    `writer` (internal) receives each sample as soon as it is decoded, to write it to the cache; `lut`
    maps stored mask values to labels (`poc59.data.masks.remap_lut`).
    """
    start = time.perf_counter()
    samples, skipped, largest, dims = scan(samples, on_bad_file)
    if not samples:
        raise DataError("no readable image/mask pairs are left" + (f" ({len(skipped)} skipped)" if skipped else ""))
    side = canvas_side(policy, size, max_side)
    n = len(samples)
    threads = min(workers or os.cpu_count() or 1, n)
    ragged = policy == "crop"  # each image at its own size, no canvas (see the module docstring)
    if ragged:
        content = [content_size(w, h, size, policy, max_side) for w, h in dims]
        sizes = torch.tensor([(h, w) for w, h in content], dtype=torch.int64).view(-1, 2)
        pixels = sizes.prod(1)
        offsets = torch.cumsum(pixels, 0) - pixels
        total, layout = int(pixels.sum()), f"{n} pairs at native scale (long side up to {max_side} px)"
    else:
        sizes, offsets = torch.empty((n, 2), dtype=torch.int64), None
        total, layout = n * side * side, f"{n} pairs at {side}x{side} px"
    # the tensors, plus what each decoding thread holds of its largest image: RGB and mask (4 bytes a
    # pixel), twice while Pillow converts and resamples
    check_memory(
        4 * total + threads * 8 * largest,
        f"Preloading {layout} ({threads} threads decoding sources of up to {largest / 1e6:.0f} MP)",
    )
    images = torch.empty((3 * total,) if ragged else (n, 3, side, side), dtype=torch.uint8)
    masks = torch.empty((total,) if ragged else (n, side, side), dtype=torch.uint8)
    if writer is not None:
        writer.open(images.nbytes, masks.nbytes)
    counts = torch.zeros((n, 256), dtype=torch.int64)
    img_np, mask_np, counts_np = images.numpy(), masks.numpy(), counts.numpy()
    bad: dict[int, str] = {}

    def fill(i: int) -> None:
        if i + _READ_AHEAD < n:
            _read_ahead(samples[i + _READ_AHEAD])
        try:
            rgb, lab, hw = _load_pair(samples[i], size, num_classes, ignore_index, policy, max_side, not ragged, lut)
        except DataError as err:
            if on_bad_file == "error":
                raise
            bad[i] = str(err)
            return
        if ragged:
            h, w = hw
            o = int(offsets[i])
            image, mask = img_np[3 * o : 3 * (o + h * w)].reshape(3, h, w), mask_np[o : o + h * w].reshape(h, w)
            at = (3 * o, o)
        else:
            sizes[i, 0], sizes[i, 1] = hw
            image, mask, at = img_np[i], mask_np[i], (i * img_np[i].nbytes, i * mask_np[i].nbytes)
        image[...] = rgb.transpose(2, 0, 1)  # straight into the shared tensor
        mask[...] = lab
        counts_np[i] = Image.fromarray(lab).histogram()  # pixels per label value, for the split's stratification
        if writer is not None:
            writer.write(at, image, mask)

    for s in samples[:_READ_AHEAD]:
        _read_ahead(s)
    with (
        ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool,
        Steps(log, "preload: decoding", n, "pairs") as steps,
    ):
        for _ in pool.map(fill, range(n)):
            steps.advance()
    if bad:
        keep = [i for i in range(n) if i not in bad]
        for i, reason in sorted(bad.items()):
            s = samples[i]
            log.warning("Skipping %s: %s", s.id, reason)
            skipped.append({"id": s.id, "image": str(s.image), "mask": str(s.mask), "reason": reason})
        if not keep:
            raise DataError(f"no readable image/mask pairs are left ({len(skipped)} skipped)")
        if ragged:  # the kept blocks, moved down in order over the gaps: no second copy of the set
            at = 0
            for src in keep:
                o, hw = int(offsets[src]), int(pixels[src])
                if at != o:  # a block may overlap its new place: copied out first
                    images[3 * at : 3 * (at + hw)] = images[3 * o : 3 * (o + hw)].clone()
                    masks[at : at + hw] = masks[o : o + hw].clone()
                at += hw
            images, masks = images[: 3 * at], masks[:at]
            pixels = pixels[keep]
            offsets = torch.cumsum(pixels, 0) - pixels
        else:
            for dst, src in enumerate(keep):  # compact in place: no second copy of the set
                if dst != src:
                    images[dst], masks[dst] = images[src], masks[src]
            images, masks = images[: len(keep)], masks[: len(keep)]
        sizes, counts = sizes[keep], counts[keep]
        samples = [samples[i] for i in keep]
    return Preloaded(
        images,
        masks,
        sizes,
        samples,
        skipped,
        time.perf_counter() - start,
        "decoded",
        label_counts=counts,
        offsets=offsets,
    )


def _decode_into_cache(
    folder: Path,
    samples: list[Sample],
    size: int,
    num_classes: int,
    ignore_index: int,
    policy: str,
    max_side: int | None,
    on_bad_file: str,
    workers: int | None,
    key: str,
    lut: np.ndarray | None = None,
) -> Preloaded:
    """Decode, writing each sample to a temporary cache folder as it comes; then publish the cache.

    When the files could not be written as decoding went (a write failed, e.g. a full disk), or pairs
    were skipped (the tensors were compacted), the cache is written afterwards, as `save_cache` does.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_folder(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = _CacheWriter(tmp)
    try:
        data = decode(
            samples, size, num_classes, ignore_index, policy, max_side, on_bad_file, workers, writer=writer, lut=lut
        )
        writer.close(sync=not writer.error)
        data.key = key
        if writer.error is not None or data.skipped:
            if writer.error is not None:
                log.info("Preload cache not written while decoding (%s); writing it afterwards", writer.error)
            shutil.rmtree(tmp, ignore_errors=True)
            save_cache(folder, data)
            return data
        _write_tensor(tmp / "labels.i64", data.label_counts)
        write_json(tmp / "meta.json", _meta(data, tmp))
        _publish(tmp, folder, data)
    except OSError as err:
        log.warning("Could not write the preload cache to %s (%s); training goes on without it", folder, err)
    finally:
        writer.close(sync=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return data


def mapped(data: Preloaded, cache_dir: str | Path | None) -> Preloaded:
    """The same set served from its published cache (mapped copy-on-write), or `data` itself if there is none.

    After a cold decode the process holds the set in its own memory while the page cache holds the
    cache file just written: two copies in RAM. Mapping the cache leaves one, shared with the page cache
    and with every other process (rank) that maps it, and read in only where used, as a warm start is.
    (The mapped tensors read the cache file: truncating it in place under them would fault on access.)
    """
    if data.source != "decoded" or cache_dir is None or not data.key:
        return data
    cached = load_cache(Path(cache_dir) / f"preload-{data.key}", data.samples, data.key, verify=False)
    if cached is None or cached.images.shape != data.images.shape:
        return data
    cached.source, cached.skipped, cached.seconds = data.source, data.skipped, data.seconds
    return cached


def preload(
    samples: list[Sample],
    size: int,
    num_classes: int,
    ignore_index: int = 255,
    policy: str = "resize",
    max_side: int | None = None,
    on_bad_file: str = "error",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    mask_remap: Mapping[int, int] | None = None,
    before_decode: Callable[[list[Sample]], None] | None = None,
) -> Preloaded:
    """The decoded set, from the on-disk cache when it is current, else decoded (and cached).

    `mask_remap` maps stored mask values to labels as masks are read (`poc59.data.masks`; part of the
    cache key). `before_decode(samples)` runs only when the set is about to be decoded (no current cache):
    checks that would otherwise wait for the whole decode.
    """
    start = time.perf_counter()
    folder = None
    lut = remap_lut(mask_remap, num_classes, ignore_index)
    key = cache_key(samples, size, policy, max_side, num_classes, on_bad_file, mask_remap)
    if cache_dir is not None:
        remove_dead_writers(Path(cache_dir))  # what killed preloads left, at every start
        folder = Path(cache_dir) / f"preload-{key}"
        cached = load_cache(folder, samples, key)
        if cached is not None:
            cached.seconds = time.perf_counter() - start
            log.info(
                "Preload: %d pairs mapped from cache %s in %.2f s (%.1f MB uint8)",
                len(cached.samples),
                folder,
                cached.seconds,
                cached.nbytes / 1e6,
            )
            for skipped in cached.skipped:  # named on every start, not only on the one that decoded
                log.warning("Skipped %s (when the cache was built): %s", skipped["id"], skipped["reason"])
            return cached
    if before_decode is not None:
        before_decode(samples)
    if folder is None:
        data = decode(samples, size, num_classes, ignore_index, policy, max_side, on_bad_file, workers, lut=lut)
        data.key = key
    else:
        data = _decode_into_cache(
            folder, samples, size, num_classes, ignore_index, policy, max_side, on_bad_file, workers, key, lut
        )
    data.seconds = time.perf_counter() - start
    log.info(
        "Preload: %d pairs decoded %s (%s) in %.1f s (%.1f MB uint8)%s",
        len(data.samples),
        "at native scale, stored ragged" if data.ragged else f"at {data.images.shape[-1]} px",
        policy,
        data.seconds,
        data.nbytes / 1e6,
        f"; {len(data.skipped)} skipped" if data.skipped else "",
    )
    return data

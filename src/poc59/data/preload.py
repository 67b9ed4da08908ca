"""Decode every pair once into two contiguous uint8 tensors, and cache them on disk.

Images become [N, 3, S, S] uint8 and masks [N, S, S] uint8: 4 bytes per pixel,
never float copies of full-resolution images. Decoding runs in threads (Pillow
releases the GIL while decoding and resizing) writing straight into the
preallocated tensors, so peak memory is the result plus one image per thread.

The result is cached (`cache_dir/preload-<key>/`), keyed by the files' names,
sizes and modification times, the geometry and the class count: the next run
maps the cache into memory instead of decoding. The cache is written to a
temporary folder and renamed into place, so a crash or a concurrent run never
leaves a half-written cache that looks complete; a damaged one is rebuilt.

Geometry (`policy`):
- `resize`: the whole image to S x S (aspect not kept).
- `pad`:    scaled so the long side is S, aspect kept, placed top-left on an
            S x S canvas; the rest is image 0 / mask 255 (ignored).
- `crop`:   native scale, capped so the long side is at most `max_side`, placed
            top-left on a canvas of side `max_side` rounded up to a multiple of
            S; training takes random S x S windows, validation tiles it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from poc59.atomic import write_json
from poc59.data.sources import DataError, Sample

log = logging.getLogger(__name__)

POLICIES = ("resize", "pad", "crop")
CACHE_VERSION = 1
_CHECK_BLOCKS = 32  # sampled 64 KiB blocks whose hash detects a damaged cache without reading it all


@dataclass
class Preloaded:
    """The decoded set: images [N,3,H,W] uint8, masks [N,H,W] uint8 (255 = ignore).

    `sizes` [N,2] holds each sample's (height, width) of real content on the
    canvas (the rest is padding, label 255); `samples` are the pairs kept, in
    tensor order; `skipped` lists files left out under `on_bad_file=skip`.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    source: str = "decoded"  # or "cache"
    key: str = ""

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes


# -- reading one pair --------------------------------------------------------------------------


def _open(path: Path, load: bool = True) -> Image.Image:
    try:
        img = Image.open(path)
        if load:
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
    sample: Sample, size: int, num_classes: int, ignore_index: int, policy: str = "resize", max_side: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """One pair on its canvas: (image HxWx3, mask HxW, (content height, content width)).

    Images are resampled with antialiasing (bilinear over the whole footprint),
    masks with nearest neighbour, so labels and 255 survive unchanged.
    """
    image = _open(sample.image)
    mask = _open(sample.mask)
    if image.size != mask.size:
        raise DataError(
            f"size mismatch: {sample.image} is {image.size[0]}x{image.size[1]} but "
            f"{sample.mask} is {mask.size[0]}x{mask.size[1]}; an image and its mask must match"
        )
    labels = _mask_array(mask, sample.mask)
    check_labels(labels, num_classes, ignore_index, sample.mask)
    rgb = _to_rgb(image)
    lab = Image.fromarray(labels, "L")
    if policy == "resize":
        target = (size, size)
    else:
        cap = size if policy == "pad" else max_side
        w, h = rgb.size
        scale = cap / max(w, h) if policy == "pad" else min(1.0, cap / max(w, h))
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if target != rgb.size:
        rgb = rgb.resize(target, Image.BILINEAR, reducing_gap=None)
        lab = lab.resize(target, Image.NEAREST)
    side = canvas_side(policy, size, max_side)
    img_out = np.zeros((side, side, 3), np.uint8)
    mask_out = np.full((side, side), ignore_index, np.uint8)
    w, h = target
    img_out[:h, :w] = np.asarray(rgb)
    mask_out[:h, :w] = np.asarray(lab)
    return img_out, mask_out, (h, w)


# -- validation before any work ----------------------------------------------------------------


def scan(samples: list[Sample], on_bad_file: str = "error") -> tuple[list[Sample], list[dict]]:
    """Read every header (not the pixels): unreadable files and size mismatches, before anything is allocated."""
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"data.on_bad_file={on_bad_file!r} must be 'error' or 'skip'")
    good, skipped = [], []
    for s in samples:
        try:
            im, mk = _open(s.image, load=False), _open(s.mask, load=False)
            if im.size != mk.size:
                raise DataError(
                    f"size mismatch: {s.image} is {im.size[0]}x{im.size[1]} but "
                    f"{s.mask} is {mk.size[0]}x{mk.size[1]}; an image and its mask must match"
                )
        except DataError as err:
            if on_bad_file == "error":
                raise
            skipped.append({"id": s.id, "image": str(s.image), "mask": str(s.mask), "reason": str(err)})
            log.warning("Skipping %s: %s", s.id, err)
            continue
        good.append(s)
    return good, skipped


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


def cache_key(samples: list[Sample], size: int, policy: str, max_side: int | None, num_classes: int, on_bad_file: str) -> str:
    """Changes whenever any file's name, size or modification time, or the geometry, changes."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{policy}|{max_side}|{num_classes}|{on_bad_file}\n".encode())
    for s in samples:
        for p in (s.image, s.mask):
            st = p.stat()
            h.update(f"{s.id}\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _sample_hash(path: Path) -> str:
    """Hash of evenly spaced blocks: notices truncation and most damage without reading gigabytes."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for k in range(_CHECK_BLOCKS):
            f.seek(size * k // _CHECK_BLOCKS)
            h.update(f.read(65536))
    return h.hexdigest()


def _write_tensor(path: Path, t: torch.Tensor) -> None:
    with path.open("wb") as f:
        t.numpy().tofile(f)
        f.flush()
        os.fsync(f.fileno())


def save_cache(folder: Path, data: Preloaded) -> None:
    """Write the cache next to its final place, then rename it in (a concurrent writer's copy wins harmlessly)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if data.nbytes > free:
        log.warning("Not caching the preload: it needs %.1f GB but %s has %.1f GB free", data.nbytes / 1e9, folder.parent, free / 1e9)
        return
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_tensor(tmp / "images.u8", data.images)
        _write_tensor(tmp / "masks.u8", data.masks)
        meta = {
            "version": CACHE_VERSION,
            "key": data.key,
            "images_shape": list(data.images.shape),
            "masks_shape": list(data.masks.shape),
            "sizes": data.sizes.tolist(),
            "ids": [s.id for s in data.samples],
            "skipped": data.skipped,
            "check": {name: _sample_hash(tmp / name) for name in ("images.u8", "masks.u8")},
        }
        write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, folder)
        except OSError:  # another run renamed its copy first (or a stale one is in the way)
            if load_cache(folder, data.samples, data.key) is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    except OSError as err:
        log.warning("Could not write the preload cache to %s (%s); training goes on without it", folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cache(folder: Path, samples: list[Sample], key: str) -> Preloaded | None:
    """Map a cache into memory, or None if it is missing, stale or damaged."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    start = time.perf_counter()
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            return None
        tensors = []
        for name, shape in (("images.u8", meta["images_shape"]), ("masks.u8", meta["masks_shape"])):
            path = folder / name
            if path.stat().st_size != math.prod(shape) or _sample_hash(path) != meta["check"][name]:
                log.warning("Preload cache %s is damaged; rebuilding it", folder)
                return None
            tensors.append(torch.from_file(str(path), shared=False, size=math.prod(shape), dtype=torch.uint8).view(*shape))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        log.warning("Preload cache %s is unreadable (%s); rebuilding it", folder, err)
        return None
    by_id = {s.id: s for s in samples}
    kept = [by_id[i] for i in meta["ids"] if i in by_id]
    if len(kept) != len(meta["ids"]):
        return None
    return Preloaded(
        tensors[0], tensors[1], torch.tensor(meta["sizes"], dtype=torch.int64).view(-1, 2), kept,
        meta["skipped"], time.perf_counter() - start, "cache", key,
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
) -> Preloaded:
    """Decode all pairs into uint8 tensors, in parallel threads; bad pairs raise, or are skipped and listed."""
    start = time.perf_counter()
    samples, skipped = scan(samples, on_bad_file)
    if not samples:
        raise DataError("no readable image/mask pairs are left" + (f" ({len(skipped)} skipped)" if skipped else ""))
    side = canvas_side(policy, size, max_side)
    n = len(samples)
    check_memory(n * 4 * side * side, f"Preloading {n} pairs at {side}x{side} px")
    images = torch.empty((n, 3, side, side), dtype=torch.uint8)
    masks = torch.empty((n, side, side), dtype=torch.uint8)
    sizes = torch.empty((n, 2), dtype=torch.int64)
    bad: dict[int, str] = {}

    def fill(i: int) -> None:
        try:
            rgb, lab, hw = load_pair(samples[i], size, num_classes, ignore_index, policy, max_side)
        except DataError as err:
            if on_bad_file == "error":
                raise
            bad[i] = str(err)
            return
        images[i].numpy()[...] = rgb.transpose(2, 0, 1)  # straight into the shared tensor
        masks[i].numpy()[...] = lab
        sizes[i] = torch.tensor(hw)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(fill, range(n)))
    if bad:
        keep = [i for i in range(n) if i not in bad]
        for i, reason in sorted(bad.items()):
            s = samples[i]
            log.warning("Skipping %s: %s", s.id, reason)
            skipped.append({"id": s.id, "image": str(s.image), "mask": str(s.mask), "reason": reason})
        for dst, src in enumerate(keep):  # compact in place: no second copy of the set
            if dst != src:
                images[dst], masks[dst], sizes[dst] = images[src], masks[src], sizes[src]
        images, masks, sizes = images[: len(keep)], masks[: len(keep)], sizes[: len(keep)]
        samples = [samples[i] for i in keep]
        if not samples:
            raise DataError(f"no readable image/mask pairs are left ({len(skipped)} skipped)")
    return Preloaded(images, masks, sizes, samples, skipped, time.perf_counter() - start, "decoded")


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
) -> Preloaded:
    """The decoded set, from the on-disk cache when it is current, else decoded (and cached)."""
    start = time.perf_counter()
    folder = None
    key = cache_key(samples, size, policy, max_side, num_classes, on_bad_file)
    if cache_dir is not None:
        folder = Path(cache_dir) / f"preload-{key}"
        cached = load_cache(folder, samples, key)
        if cached is not None:
            cached.seconds = time.perf_counter() - start
            log.info("Preload: %d pairs mapped from cache %s in %.2f s (%.1f MB uint8)", len(cached.samples), folder, cached.seconds, cached.nbytes / 1e6)
            return cached
    data = decode(samples, size, num_classes, ignore_index, policy, max_side, on_bad_file, workers)
    data.key = key
    if folder is not None:
        save_cache(folder, data)
    data.seconds = time.perf_counter() - start
    log.info(
        "Preload: %d pairs decoded at %d px (%s) in %.1f s (%.1f MB uint8)%s",
        len(data.samples), data.images.shape[-1], policy, data.seconds, data.nbytes / 1e6,
        f"; {len(data.skipped)} skipped" if data.skipped else "",
    )
    return data

"""The preload cache: a decoded set's tensors on disk, checked byte for byte and mapped back into memory.

`cache_dir/preload-<key>/` holds images.u8, masks.u8 (and labels.i64, each sample's pixels per label value)
as raw tensors, and meta.json with their shapes, the samples' ids, the pairs skipped and an xxh3-128 hash of
every file. The key changes with any file's name, size or modification time, the geometry, the class count
and the mask remap. A cache is built in a temporary folder beside its place and published whole under a lock
(`poc59.core.publish`), so a crash or a concurrent run never leaves a half-written cache that looks complete;
a concurrent writer's valid copy wins, a damaged one is replaced, and a killed writer's temporary folder is
removed by the next start (`remove_dead_writers`). `load_cache` maps the tensors copy-on-write after checking
every byte against its hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import xxhash
from PIL import Image

from poc59.core import publish
from poc59.core.atomic import write_json
from poc59.data.sources import Sample
from poc59.data.storage import Preloaded

log = logging.getLogger(__name__)

# The cache format of each layout; a cache of another version is not used. Dense (resize, pad): every byte
# hashed (xxh3-128) when written and checked when mapped. Ragged (crop): the same, each image at its own size.
CACHE_VERSIONS = {"dense": 2, "ragged": 3}


def cache_version(policy: str) -> int:
    """The cache format a set stored under `policy` is written in."""
    return CACHE_VERSIONS["ragged" if policy == "crop" else "dense"]


_HASH_CHUNK = 1 << 24  # bytes read at a time while hashing a cache file
_FLUSH_SECONDS = 0.5  # while decoding into the cache files, hand what is written so far to the disk this often


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


def _finish(tmp: Path, folder: Path, data: Preloaded) -> None:
    """Complete a temporary cache folder that holds the image and mask files (the label counts, then meta.json
    with every file's hash) and put it in place: a concurrent writer's valid copy wins harmlessly, a damaged
    or stale one in the way is replaced."""
    if data.label_counts is not None:
        _write_tensor(tmp / "labels.i64", data.label_counts)
    write_json(tmp / "meta.json", _meta(data, tmp))
    publish.publish(
        tmp, folder, keep=lambda there: load_cache(there, data.samples, data.key) is not None, replace=lambda _: True
    )


class CacheWriter:
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
    tmp = publish.temporary(folder)
    try:
        _write_tensor(tmp / "images.u8", data.images)
        _write_tensor(tmp / "masks.u8", data.masks)
        _finish(tmp, folder, data)
    except OSError as err:
        log.warning("Could not write the preload cache to %s (%s); training goes on without it", folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_dead_writers(cache_dir: Path) -> list[Path]:
    """Remove temporary cache folders whose writer is gone (killed mid-write; see `poc59.core.publish`); a live
    writer's folder is left alone. Returns what was removed (each is logged)."""
    removed = publish.remove_dead(Path(cache_dir), "preload-*")
    for tmp in removed:
        log.info("Removed %s: the temporary cache of a preload that was killed while writing it", tmp)
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


def build(folder: Path, key: str, decode: Callable[[CacheWriter], Preloaded]) -> Preloaded:
    """`decode(writer)` the set while `writer` puts each sample into a temporary cache folder; then publish it.

    When the files could not be written as decoding went (a write failed, e.g. a full disk), or pairs
    were skipped (the tensors were compacted), the cache is written afterwards, as `save_cache` does.
    A cache that cannot be written is logged and left out: the decoded set is returned all the same.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = publish.temporary(folder)
    writer = CacheWriter(tmp)
    try:
        data = decode(writer)
        writer.close(sync=not writer.error)
        data.key = key
        if writer.error is not None or data.skipped:
            if writer.error is not None:
                log.info("Preload cache not written while decoding (%s); writing it afterwards", writer.error)
            shutil.rmtree(tmp, ignore_errors=True)
            save_cache(folder, data)
            return data
        _finish(tmp, folder, data)
    except OSError as err:
        log.warning("Could not write the preload cache to %s (%s); training goes on without it", folder, err)
    finally:
        writer.close(sync=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return data

"""Decode every pair once into two contiguous uint8 tensors, and cache them on disk.

Images become [N, 3, S, S] uint8 and masks [N, S, S] uint8 (`crop`: each image at
its own size, one after another, see below): 4 bytes per pixel, never float
copies of full-resolution images. Decoding runs in threads (Pillow
releases the GIL while decoding and resizing) writing straight into the
preallocated tensors, so peak memory is the result plus one image per thread.

Reading one pair is `poc59.data.decoding`'s; the result is cached
(`cache_dir/preload-<key>/`, `poc59.data.cache`), keyed by the files' names,
sizes and modification times, the geometry and the class count: the next run
maps the cache into memory instead of decoding; a damaged one is rebuilt.
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

import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from poc59.core.progress import Steps
from poc59.data.cache import CacheWriter, build, cache_key, load_cache, remove_dead_writers
from poc59.data.decoding import (
    canvas_side,
    check_memory,
    content_size,
    decode_pair,
    read_ahead,
    scan,
)
from poc59.data.masks import remap_lut
from poc59.data.sources import DataError, Sample
from poc59.data.storage import Preloaded

__all__ = ["decode", "mapped", "preload"]

log = logging.getLogger(__name__)

_READ_AHEAD = 32  # pairs whose files the kernel is asked to read ahead of the decoding threads


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
    writer: CacheWriter | None = None,
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
            read_ahead(samples[i + _READ_AHEAD])
        try:
            rgb, lab, hw = decode_pair(samples[i], size, num_classes, ignore_index, policy, max_side, not ragged, lut)
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
        read_ahead(s)
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
    """Decode, writing each sample to a temporary cache folder as it comes; then publish the cache
    (`poc59.data.cache.build`)."""
    return build(
        folder,
        key,
        lambda writer: decode(
            samples, size, num_classes, ignore_index, policy, max_side, on_bad_file, workers, writer=writer, lut=lut
        ),
    )


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

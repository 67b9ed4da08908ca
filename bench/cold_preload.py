"""Cold preload: from the call to uint8 tensors in memory (cache written and fsynced), vs PIL one by one.

poc59: `poc59.data.preload.preload(samples, S, C, cache_dir=<empty folder>)`: header scan, decode and
resize in threads (one per core), label checks, the cache written while decoding; then every page of the
result is touched, so the figure is "resident in memory".
Baseline: the same files decoded and resized one by one with PIL in one process, into a list of numpy
arrays (the earlier system's preload, resized), with no checks and no cache.
The page cache is dropped before every run when allowed (root), so both read the files from disk.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from bench import common

NAME = "cold_preload"
BAR = 1.5  # x faster on 2 cores (2x is the limit: the same decoding work on 2 cores)


def pil_one_by_one(samples, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for s in samples:
        with Image.open(s.image) as im:
            images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
        with Image.open(s.mask) as mk:
            masks.append(np.asarray(mk.resize((size, size), Image.NEAREST)))
    return images, masks


def run(quick: bool) -> list[dict]:
    from poc59.core.classes import load_class_table
    from poc59.data.preload import preload
    from poc59.data.sources import discover_pairs

    s = common.sizes(quick)
    root = common.data_set(s.pairs)
    samples = discover_pairs(root)[0]
    classes = load_class_table(root)
    dropped = common.can_drop_page_cache()

    cores: dict[str, list[float]] = {"poc59": [], "baseline": []}

    def poc59() -> float:
        cache = common.scratch_dir("cold-")
        try:
            common.drop_page_cache()
            with common.Stopwatch() as sw:
                data = preload(samples, s.image_size, classes.num_classes, classes.ignore_index, cache_dir=cache)
                common.touch(data.images, data.masks)
            seconds = sw.wall
            cores["poc59"].append(round(sw.cores, 2))
            if data.source != "decoded" or len(data.samples) != len(samples):
                raise RuntimeError(
                    f"expected a cold decode of {len(samples)} pairs, got {data.source} / {len(data.samples)}"
                )
            if not list(cache.glob("preload-*/meta.json")):
                raise RuntimeError("the cold preload wrote no cache")
            return seconds
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def baseline() -> float:
        common.drop_page_cache()
        with common.Stopwatch() as sw:
            images, masks = pil_one_by_one(samples, s.image_size)
        cores["baseline"].append(round(sw.cores, 2))
        assert len(images) == len(masks) == len(samples)
        return sw.wall

    before = common.load()
    runs = common.interleaved({"poc59": poc59, "baseline": baseline}, s.repeats)
    ours, base = common.median(runs["poc59"]), common.median(runs["baseline"])
    ratio = base / ours
    return [
        common.row(
            NAME,
            f"{len(samples):,} files to uint8 tensors at {s.image_size} px, cache written",
            ours,
            "s",
            base,
            "PIL one by one, 1 process",
            ratio,
            "x faster",
            f">= {BAR}x",
            ratio >= BAR,
            quick,
            {
                "pairs": len(samples),
                "raw_bytes": len(samples) * 4 * s.image_size**2,
                "page_cache": "dropped before each run"
                if dropped
                else "not dropped (not root): both read the same warm page cache",
                "runs_s": runs,
                "cores_used": cores,  # CPU time / wall time: poc59 would use 2.0 on 2 idle cores, the baseline 1.0
                "decode_threads": os.cpu_count(),
                "load_before": before,
                "load_after": common.load(),
            },
        )
    ]

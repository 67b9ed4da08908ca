"""Warm start: DataModule setup on a warm preload cache, to the first augmented training batch, vs a cold start.

Both are the production path: `SegmentationDataModule(...)`, `setup("fit")` (discover, preload, split, class
weights), `train_dataloader()`, its first batch, and `on_after_batch_transfer` (the augmentation) as a
Lightning trainer in training calls it. Cold: an empty cache folder, page cache dropped first (when
allowed). Warm: the cache (and its class weights) written by an earlier run, files in the page cache.
"""

from __future__ import annotations

import gc
import shutil

from bench import common

NAME = "warm_start"
BAR = 20.0  # x faster than a cold start
WARM_PER_ROUND = {False: 5, True: 1}  # warm starts are short: several per round, all in the median (quick: one)


def setup_to_first_batch(root, s, cache_dir) -> float:
    start = common.clock()
    dm = common.datamodule(root, s, cache_dir)
    dm.setup("fit")
    images, masks = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    seconds = common.clock() - start
    if images.shape != (s.batch_size, 3, s.image_size, s.image_size) or masks.shape != (
        s.batch_size,
        s.image_size,
        s.image_size,
    ):
        raise RuntimeError(f"unexpected first batch {tuple(images.shape)} / {tuple(masks.shape)}")
    source = dm.data.source
    del dm, images, masks
    gc.collect()
    return seconds, source


def run(quick: bool) -> list[dict]:
    s = common.sizes(quick)
    root = common.data_set(s.pairs)
    warm_dir = common.warm_cache_dir()
    setup_to_first_batch(root, s, warm_dir)  # fills the shared cache if this is its first use
    dropped = common.can_drop_page_cache()
    warm_runs: list[float] = []

    def cold() -> float:
        cache = common.scratch_dir("cold-dm-")
        try:
            common.drop_page_cache()
            seconds, source = setup_to_first_batch(root, s, cache)
            if source != "decoded":
                raise RuntimeError(f"a cold start found a cache ({source})")
            return seconds
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def warm() -> float:
        times = []
        for _ in range(WARM_PER_ROUND[quick]):
            seconds, source = setup_to_first_batch(root, s, warm_dir)
            if source != "cache":
                raise RuntimeError(f"a warm start decoded ({source})")
            times.append(seconds)
        warm_runs.extend(times)
        return common.median(times)

    before = common.load()
    runs = common.interleaved({"warm": warm, "cold": cold}, s.repeats)
    ours, base = common.median(warm_runs), common.median(runs["cold"])
    ratio = base / ours
    return [
        common.row(
            NAME,
            f"DataModule setup on a warm cache to the first augmented batch ({s.pairs:,} files)",
            ours,
            "s",
            base,
            "cold start, same path",
            ratio,
            "x faster",
            f">= {BAR:g}x",
            ratio >= BAR,
            quick,
            {
                "pairs": s.pairs,
                "warm_runs_s": warm_runs,
                "cold_runs_s": runs["cold"],
                "page_cache": ("cold: dropped before each run; " if dropped else "cold: not dropped (not root); ")
                + "warm: cache files in the page cache, except the first warm run after each cold one, which "
                "reads the cache from disk (the cold run dropped the page cache)",
                "load_before": before,
                "load_after": common.load(),
            },
        )
    ]

"""Feed: indices to an augmented uint8 batch ready for the model, vs the earlier system's per-sample DataLoader.

poc59: the DataModule's own training feed (`dm.train_dataloader()`, a warm preload cache) and, per batch,
`dm.on_after_batch_transfer(batch, 0)` under a trainer in training: the gather into the feed's reused
buffers plus the default flips/rot90 (hflip 0.5, vflip 0.3, rot90 0.3), exactly as training runs them.
Float conversion belongs to the model step and is not included. Whole epochs, after one warm-up epoch.
Baseline: the earlier system's way: a torch DataLoader (2 workers, batch B, shuffled) over the training
images stored as pre-decoded, full-size numpy arrays, augmented sample by sample with albumentations
(Resize to S, HorizontalFlip 0.5, VerticalFlip 0.3, RandomRotate90 0.3, Normalize, ToTensorV2). Whole
epochs with persistent workers, after one warm-up epoch.

A second row (issue 16) prices class-aware windows: the same set under policy=crop (native scale, ragged
storage, windows of S), its training feed with `rare_fraction` 0.25 (the default) against 0 (uniform
windows), whole epochs interleaved; bar: equal within noise.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench import common

NAME = "feed"
BAR_RATIO = 5.0  # x the baseline's images/s
BAR_RATE = 2000.0  # images/s on this machine's 2 cores
RARE_FRACTION = 0.25  # the class-aware share priced against uniform windows: conf/data/artefact.yaml's default
MAX_SIDE = 800  # policy=crop: the generated sources' native scale (300-800 px), stored uncapped
BAR_AWARE = 0.95  # class-aware windows' images/s over uniform windows': equal within this machine's noise


class EarlierDataset(Dataset):
    """Full-size decoded arrays, resized and augmented per sample with albumentations (the earlier system)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], size: int) -> None:
        try:
            import albumentations as A
            from albumentations.pytorch import ToTensorV2
        except ImportError as err:
            raise RuntimeError(
                f"the earlier system's feed (the baseline) needs albumentations (in the dev extra: pip install -e '.[dev]') ({err})"
            ) from err

        self.images, self.masks = images, masks
        self.transform = A.Compose(
            [
                A.Resize(size, size),
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.3),
                A.RandomRotate90(p=0.3),
                A.Normalize(),
                ToTensorV2(),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        out = self.transform(image=self.images[i], mask=self.masks[i])
        return out["image"], out["mask"]


def _decode_full_size(samples) -> tuple[list[np.ndarray], list[np.ndarray]]:
    def one(s):
        with Image.open(s.image) as im, Image.open(s.mask) as mk:
            return np.asarray(im.convert("RGB")), np.asarray(mk)

    with ThreadPoolExecutor(2) as pool:
        pairs = list(pool.map(one, samples))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run(quick: bool) -> list[dict]:
    s = common.sizes(quick)
    root = common.data_set(s.pairs)
    epochs = 1 if quick else 3  # poc59 epochs per measurement (an epoch takes well under a second)

    aware = _class_aware_row(root, s, epochs, quick)  # before the baseline's workers start
    dm = common.datamodule(root, s, common.warm_cache_dir())
    dm.setup("fit")
    feed = dm.train_dataloader()
    split = {"gather_s": 0.0, "augment_s": 0.0, "batches": 0}

    def one_epoch() -> int:
        return _epoch(dm, feed, s.image_size, split)

    one_epoch()  # warm-up: ring buffers allocated, cache pages mapped
    split.update(gather_s=0.0, augment_s=0.0, batches=0)

    cores: list[float] = []

    def poc59() -> float:
        with common.Stopwatch() as sw:
            n = sum(one_epoch() for _ in range(epochs))
        cores.append(round(sw.cores, 2))
        return n / sw.wall

    by_id = {x.id: x for x in dm.samples}
    train = [by_id[i] for i in dm.split["train"]]
    dataset = EarlierDataset([], [], s.image_size)  # fails now if albumentations is missing
    dataset.images, dataset.masks = _decode_full_size(train)
    loaders = [
        DataLoader(  # a list, so the finally below can drop the loader (and its persistent workers)
            dataset,
            batch_size=s.batch_size,
            shuffle=True,
            num_workers=2,
            drop_last=True,
            persistent_workers=True,
        )
    ]

    def one_loader_epoch() -> int:
        n = 0
        for x, _ in loaders[0]:
            if x.shape[1:] != (3, s.image_size, s.image_size):
                raise RuntimeError(f"unexpected baseline batch {tuple(x.shape)}")
            n += len(x)
        return n

    one_loader_epoch()  # warm-up: workers started

    def baseline() -> float:
        start = common.clock()
        n = one_loader_epoch()
        return n / (common.clock() - start)

    before = common.load()
    try:
        runs = common.interleaved({"poc59": poc59, "baseline": baseline}, s.repeats)
    finally:
        loaders.clear()  # stops the persistent workers
    ours, base = common.median(runs["poc59"]), common.median(runs["baseline"])
    ratio = ours / base
    batches = max(1, split["batches"])
    return [
        common.row(
            NAME,
            f"indices to augmented uint8 batches of {s.batch_size} at {s.image_size} px",
            ours,
            "img/s",
            base,
            "per-sample albumentations DataLoader, 2 workers",
            ratio,
            "x",
            f">= {BAR_RATIO:g}x and >= {BAR_RATE:,.0f} img/s",
            ratio >= BAR_RATIO and ours >= BAR_RATE,
            quick,
            {
                "train_images": len(train),
                "batches_per_epoch": len(feed),
                "gather_ms_per_batch": round(1e3 * split["gather_s"] / batches, 2),
                "augment_ms_per_batch": round(1e3 * split["augment_s"] / batches, 2),
                "runs_img_per_s": runs,
                "poc59_cores_used": cores,  # CPU time / wall time of the (single-threaded) feed: 1.0 on an idle core
                "torch_threads": torch.get_num_threads(),
                "load_before": before,
                "load_after": common.load(),
            },
        ),
        aware,
    ]


def _epoch(dm, feed, side: int, split: dict | None = None) -> int:
    """One epoch of `dm`'s training `feed`, each batch augmented as training does it: the images it gave.
    `split` adds up the time spent gathering and augmenting."""
    split = split if split is not None else {"gather_s": 0.0, "augment_s": 0.0, "batches": 0}
    n, it = 0, iter(feed)
    while True:
        t0 = common.clock()
        try:
            batch = next(it)
        except StopIteration:
            break
        t1 = common.clock()
        images, masks = dm.on_after_batch_transfer(batch, 0)
        split["gather_s"] += t1 - t0
        split["augment_s"] += common.clock() - t1
        split["batches"] += 1
        if images.dtype != torch.uint8 or images.shape[1:] != (3, side, side):
            raise RuntimeError(f"unexpected batch {images.dtype} {tuple(images.shape)}")
        n += len(images)
    dm.trainer.current_epoch += 1
    return n


def _class_aware_row(root, s: common.Sizes, epochs: int, quick: bool) -> dict:
    """Class-aware windows (rare_fraction=RARE_FRACTION) against uniform ones: the crop feed's images/s."""
    feeds = {}
    for rare in (0.0, RARE_FRACTION):  # one preload cache (the geometry), read by both
        dm = common.datamodule(
            root,
            s,
            common.warm_cache_dir(),
            policy="crop",
            max_side=MAX_SIDE,
            crop_sampling={"rare_fraction": rare},
        )
        dm.setup("fit")
        feeds[rare] = dm, dm.train_dataloader()
        _epoch(*feeds[rare], s.image_size)  # warm-up: ring buffers allocated, cache pages mapped
    sites = feeds[RARE_FRACTION][1].sites
    if sites is None or not sites.needed:
        raise RuntimeError("no class needs class-aware windows on this set: nothing to price")

    def rate(rare: float) -> Callable[[], float]:
        def measure() -> float:
            start = common.clock()
            n = sum(_epoch(*feeds[rare], s.image_size) for _ in range(epochs))
            return n / (common.clock() - start)

        return measure

    runs = common.interleaved({"uniform": rate(0.0), "aware": rate(RARE_FRACTION)}, s.repeats)
    aware, uniform = common.median(runs["aware"]), common.median(runs["uniform"])
    ratio = aware / uniform
    return common.row(
        "feed_class_aware",
        f"class-aware windows: the crop feed (native scale, windows of {s.image_size} px, batches of "
        f"{s.batch_size}, augmented) with rare_fraction={RARE_FRACTION}",
        aware,
        "img/s",
        uniform,
        "the same feed with uniform windows (rare_fraction=0)",
        ratio,
        "x",
        f">= {BAR_AWARE:g}x (equal within noise)",
        ratio >= BAR_AWARE,
        quick,
        {
            "runs_img_per_s": runs,
            "class_aware_windows_per_batch": round(RARE_FRACTION * s.batch_size),
            "classes_drawn": [c for c, p in enumerate(sites.probabilities.tolist()) if p > 0],
            "load": common.load(),
        },
    )

"""Class-aware training windows: the promised share of windows over a planted 1-pixel class, windows inside
the content, and the same windows after a resume (they are a function of seed, epoch and batch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import make_folder
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.feed import BatchFeed
from poc59.data.sampling import ClassSites

N, SIDE, WINDOW, PIXEL = 10, 64, 16, (3, 20, 40)  # the planted class-1 pixel: image 3, row 20, column 40


def _planted(sizes: list[tuple[int, int]] | None = None):
    masks = torch.zeros((N, SIDE, SIDE), dtype=torch.uint8)
    if sizes is not None:  # content smaller than the canvas: the rest is ignore padding
        for i, (h, w) in enumerate(sizes):
            masks[i, h:, :] = 255
            masks[i, :, w:] = 255
    i, y, x = PIXEL
    masks[i, y, x] = 1
    counts = torch.stack([torch.bincount(m.flatten().long(), minlength=256) for m in masks])
    size = torch.tensor(sizes or [(SIDE, SIDE)] * N, dtype=torch.int64)
    return torch.zeros((N, 3, SIDE, SIDE), dtype=torch.uint8), masks, counts, size


def _feed(rare: float, seed: int = 0, sizes=None, batch: int = 8) -> BatchFeed:
    images, masks, counts, size = _planted(sizes)
    sites = ClassSites(lambda i: masks[i, : size[i, 0], : size[i, 1]], counts, list(range(N)), num_classes=2, seed=seed)
    return BatchFeed(
        images,
        masks,
        list(range(N)),
        batch,
        shuffle=True,
        drop_last=True,
        seed=seed,
        window=WINDOW,
        sizes=size,
        sites=sites,
        rare_fraction=rare,
    )


def _share_over_the_pixel(feed: BatchFeed, epochs: int) -> tuple[float, int]:
    hits = total = 0
    for epoch in range(epochs):
        feed.epoch_fn = lambda e=epoch: e
        for _, masks in feed:
            hits += int((masks == 1).flatten(1).any(1).sum())
            total += len(masks)
    return hits / total, total


@pytest.mark.parametrize("rare", [0.0, 0.25, 0.5])
def test_the_planted_one_pixel_class_is_in_the_share_of_windows_promised(rare):
    feed = _feed(rare, batch=8)
    share, n = _share_over_the_pixel(feed, epochs=250)  # 2,000 windows
    p1 = float(feed.sites.probabilities[1])
    assert p1 > 0.99  # 1 pixel in 40,960: f ** -0.5 gives it nearly every class-aware window
    covering = (WINDOW / (SIDE - WINDOW + 1)) ** 2  # a uniform window of image 3 holding the pixel
    k = round(rare * 8) / 8
    expected = k * p1 + (1 - k) * covering / N
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(share - expected) < 4 * sigma, (share, expected, sigma)


def test_windows_stay_inside_the_content_and_hold_their_pixel():
    sizes = [(40, 30), (64, 64), (10, 12), (30, 50), (30, 64), (16, 16), (50, 50), (64, 64), (20, 60), (60, 20)]
    _, masks, counts, size = _planted(sizes)
    sites = ClassSites(lambda i: masks[i, : sizes[i][0], : sizes[i][1]], counts, list(range(N)), num_classes=2)
    g = torch.Generator().manual_seed(0)
    drawn = sites.draw(4000, g, WINDOW, size)
    for i, y, x in drawn.tolist():
        h, w = sizes[i]
        assert 0 <= y <= max(h - WINDOW, 0) and 0 <= x <= max(w - WINDOW, 0)  # past the content: padding only
    at_pixel = drawn[drawn[:, 0] == PIXEL[0]]
    assert len(at_pixel) > 3000  # the rare class's windows
    ok = (at_pixel[:, 1] <= PIXEL[1]) & (PIXEL[1] < at_pixel[:, 1] + WINDOW)
    ok &= (at_pixel[:, 2] <= PIXEL[2]) & (PIXEL[2] < at_pixel[:, 2] + WINDOW)
    assert float(ok.float().mean()) > 0.99  # a class-0 draw of image 3 may lie elsewhere


def test_a_resumed_feed_draws_the_same_windows_and_the_uniform_ones_are_unchanged():
    first, again, uniform = _feed(0.25), _feed(0.25), _feed(0.0)
    for feed in (first, again, uniform):
        feed.epoch_fn = lambda: 7
    a = [(i.clone(), m.clone()) for i, m in first]
    b = [(i.clone(), m.clone()) for i, m in again]  # a new feed, as after a resume: no state to restore
    u = [m.clone() for _, m in uniform]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    n = round(0.25 * 8)
    assert all(torch.equal(x[1][n:], m[n:]) for x, m in zip(a, u))  # only the class-aware items differ
    assert any(not torch.equal(x[1][:n], m[:n]) for x, m in zip(a, u))


def test_the_datamodule_samples_rare_classes_only_under_crop_and_only_for_training(tmp_path):
    root = make_folder(tmp_path / "d", n=8, copies=0, size=(48, 40), classes=3)
    dm = SegmentationDataModule(
        root, image_size=16, batch_size=4, cache=False, policy="crop", max_side=48, crop_sampling={"rare_fraction": 0.5}
    )
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.sites is not None and train.rare_fraction == 0.5 and val.sites is None
    images, masks = next(iter(train))
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 16, 16)
    resized = SegmentationDataModule(
        root, image_size=16, batch_size=4, cache=False, crop_sampling={"rare_fraction": 0.5}
    )
    resized.setup()
    assert resized.train_dataloader().sites is None  # whole images: no windows to place
    with pytest.raises(ValueError, match="rare_fraction=1.5"):
        SegmentationDataModule(root, crop_sampling={"rare_fraction": 1.5})
    assert np.isclose(float(train.sites.probabilities.sum()), 1.0)

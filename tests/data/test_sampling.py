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
from poc59.data.sampling import NEEDED_BELOW, ClassSites, window_share

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
    sites = ClassSites(
        lambda i: masks[i, : size[i, 0], : size[i, 1]], counts, list(range(N)), num_classes=2, window=WINDOW, seed=seed
    )
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
    assert p1 == 1.0  # the background is in every uniform window: the 1-pixel class gets every class-aware one
    covering = (WINDOW / (SIDE - WINDOW + 1)) ** 2  # a uniform window of image 3 holding the pixel
    k = round(rare * 8) / 8
    expected = k * p1 + (1 - k) * covering / N
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(share - expected) < 4 * sigma, (share, expected, sigma)


def test_windows_stay_inside_the_content_and_hold_their_pixel():
    sizes = [(40, 30), (64, 64), (10, 12), (30, 50), (30, 64), (16, 16), (50, 50), (64, 64), (20, 60), (60, 20)]
    _, masks, counts, size = _planted(sizes)
    sites = ClassSites(
        lambda i: masks[i, : sizes[i][0], : sizes[i][1]], counts, list(range(N)), num_classes=2, window=WINDOW
    )
    g = torch.Generator().manual_seed(0)
    drawn = sites.draw(4000, g, WINDOW, size)
    for i, y, x in drawn.tolist():
        h, w = sizes[i]
        assert 0 <= y <= max(h - WINDOW, 0) and 0 <= x <= max(w - WINDOW, 0)  # past the content: padding only
    at_pixel = drawn[drawn[:, 0] == PIXEL[0]]
    assert len(at_pixel) > 3000  # the rare class's windows
    ok = (at_pixel[:, 1] <= PIXEL[1]) & (PIXEL[1] < at_pixel[:, 1] + WINDOW)
    ok &= (at_pixel[:, 2] <= PIXEL[2]) & (PIXEL[2] < at_pixel[:, 2] + WINDOW)
    assert bool(ok.all())  # every draw is of class 1: the background needs none


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
    train_ids = train.units.tolist()
    for c in range(3):  # the share of uniform windows holding each class, from the set's own masks
        brute = np.mean([_brute_window_share(dm.data.mask(i).numpy() == c, 16) for i in train_ids])
        assert float(train.sites.window_share[c]) == pytest.approx(brute)
    assert float(train.sites.window_share[:3].min()) > NEEDED_BELOW  # big blobs: in most windows already
    assert not train.sites.needed and float(train.sites.probabilities.sum()) == 0.0


def _brute_window_share(here: np.ndarray, window: int) -> float:
    """The feed's uniform top-left positions, one by one."""
    h, w = here.shape
    held = [
        here[y : y + window, x : x + window].any()
        for y in range(max(h - window, 0) + 1)
        for x in range(max(w - window, 0) + 1)
    ]
    return float(np.mean(held))


@pytest.mark.parametrize("shape", [(40, 30), (12, 50), (10, 10), (33, 17)])
def test_the_window_share_is_that_of_every_top_left_position(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0005, 0.01, 0.2):
        here = rng.random(shape) < density
        here[rng.integers(shape[0]), rng.integers(shape[1])] = True
        assert window_share(here, 16) == pytest.approx(_brute_window_share(here, 16), abs=1e-12)


def test_a_class_in_most_uniform_windows_gets_no_class_aware_ones():
    """CrackForest-like: a crack crosses every image, so uniform windows hold it; moving windows onto it
    only skews the balance. The planted 1-pixel class still gets them; with it gone, all stay uniform."""
    images, masks, _, size = _planted()
    masks[:, 30, :] = 2  # a line across every image: in 16 of the 49 row positions of each window
    with_pixel = torch.stack([torch.bincount(m.flatten().long(), minlength=256) for m in masks])
    sites = ClassSites(lambda i: masks[i], with_pixel, list(range(N)), num_classes=3, window=WINDOW)
    q = sites.window_share
    assert float(q[0]) == pytest.approx(1.0) and float(q[2]) == pytest.approx(16 / 49)
    assert float(q[2]) < NEEDED_BELOW and float(sites.probabilities[2]) > 0  # a third of the windows: still needed
    masks[:, 2:64:8, :] = 2  # eight lines, 8 rows apart: every window holds one
    masks[PIXEL] = 0
    without = torch.stack([torch.bincount(m.flatten().long(), minlength=256) for m in masks])
    sites = ClassSites(lambda i: masks[i], without, list(range(N)), num_classes=3, window=WINDOW)
    assert float(sites.window_share[2]) == pytest.approx(1.0) and not sites.needed
    args = (images, masks, list(range(N)), 8)
    kw = dict(shuffle=True, drop_last=True, window=WINDOW, sizes=size)
    aware, uniform = BatchFeed(*args, sites=sites, rare_fraction=0.5, **kw), BatchFeed(*args, **kw)
    assert all(torch.equal(a[1], u[1]) for a, u in zip(aware, uniform))  # the same windows as rare_fraction=0

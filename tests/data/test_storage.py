"""Windows cut from a sample's content: the pixels inside it, image 0 and mask ignore past its edge, and on a
CPU no torch operator (NumPy copies and fills: torch's intra-op pool waits on cores that other work holds,
which made the crop feed 14x slower beside two training jobs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from poc59.core.classes import IGNORE_INDEX
from poc59.data.storage import copy_window

H, W, S = 20, 30, 16
VIEWS = {"aten::as_strided", "aten::detach", "aten::resolve_conj", "aten::resolve_neg", "aten::slice", "aten::to"}
"""Operators that only make views for `.numpy()` and slicing: no bytes moved, no thread pool."""


def _content() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(1, 256, (3, H, W), dtype=torch.uint8, generator=g)  # no 0: padding shows
    mask = torch.randint(0, 16, (H, W), dtype=torch.uint8, generator=g)
    return image, mask


def _reference(image: np.ndarray, mask: np.ndarray, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """The window by hand: a padded copy of the whole content, sliced."""
    big_i = np.zeros((3, H + S, W + S), np.uint8)
    big_m = np.full((H + S, W + S), IGNORE_INDEX, np.uint8)
    big_i[:, :H, :W], big_m[:H, :W] = image, mask
    return big_i[:, y : y + S, x : x + S], big_m[y : y + S, x : x + S]


@pytest.mark.parametrize("y, x", [(0, 0), (4, 14), (10, 20), (19, 29), (20, 30)])
def test_the_window_is_the_content_then_padding(y, x):
    image, mask = _content()
    out_i = torch.full((3, S, S), 7, dtype=torch.uint8)  # stale bytes from an earlier batch
    out_m = torch.full((S, S), 7, dtype=torch.uint8)
    copy_window(image, mask, y, x, out_i, out_m, IGNORE_INDEX)
    want_i, want_m = _reference(image.numpy(), mask.numpy(), y, x)
    assert np.array_equal(out_i.numpy(), want_i) and np.array_equal(out_m.numpy(), want_m)


def test_a_window_on_the_cpu_runs_no_torch_operator():
    image, mask = _content()
    out_i, out_m = torch.empty((3, S, S), dtype=torch.uint8), torch.empty((S, S), dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        copy_window(image, mask, 10, 20, out_i, out_m, IGNORE_INDEX)  # past both edges: padded
    ops = {e.key for e in prof.key_averages() if e.key.startswith("aten::")}
    assert not ops - VIEWS, sorted(ops - VIEWS)  # was aten::zero_ and aten::fill_

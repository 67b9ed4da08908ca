"""bench/pyramid.py: the memory it measures follows the map's width, not its height (its quick rows: test_bench.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import pyramid


def test_the_bands_are_the_map_the_bench_describes():
    got = list(pyramid.bands(600, 500))
    assert [len(labels) for labels, _ in got] == [256, 256, 88]
    labels = np.concatenate([lab for lab, _ in got])
    confidence = np.concatenate([c for _, c in got])
    assert labels.shape == confidence.shape == (600, 500) and labels.dtype == confidence.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(16)) and (labels == 6).mean() > 0.01  # blocks and lines


@pytest.mark.slow  # two fresh processes that import torch: ~20 s under load
def test_the_peak_does_not_grow_with_the_height():
    """The quick rows themselves are checked on the whole quick run's (bench/tests/test_bench.py)."""
    short, tall = pyramid.measure_memory(600, 3000), pyramid.measure_memory(2400, 3000)
    assert tall["peak_bytes"] < 1.1 * short["peak_bytes"], (short, tall)

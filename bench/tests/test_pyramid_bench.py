"""bench/pyramid.py: its quick rows, and the memory it measures follows the map's width, not its height."""

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


@pytest.mark.slow  # three fresh processes that import torch: ~25 s under load
def test_quick_rows_and_a_peak_that_does_not_grow_with_the_height():
    rows = {r["name"]: r for r in pyramid.run(quick=True)}
    assert set(rows) == {pyramid.NAME_SPEED, pyramid.NAME_MEMORY}
    for r in rows.values():
        assert r["value"] > 0 and r["baseline"] > 0 and r["passed"] is None  # quick mode: no bar judged
    assert set(rows[pyramid.NAME_MEMORY]["details"]["file_bytes"]) == {"scan_classes.tif", "scan_confidence.tif"}
    short, tall = pyramid.measure_memory(600, 3000), pyramid.measure_memory(2400, 3000)
    assert tall["peak_bytes"] < 1.1 * short["peak_bytes"], (short, tall)

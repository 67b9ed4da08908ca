"""bench/serve_latency.py: its quick rows time eager, ONNX Runtime fp32 and int8 on one scan through predict's
path, and the physical limit's two measurements (FLOPs per scan, the CPU's peak) are what they say."""

from __future__ import annotations

import pytest

from bench import serve_latency
from bench.predict import model as seeded_model
from bench.predict import scan_pixels
from poc59.inference.tiling import tile_starts


@pytest.mark.slow
def test_quick_rows_time_the_three_sides_on_one_scan():
    rows = {r["name"]: r for r in serve_latency.run(quick=True)}
    assert set(rows) == {serve_latency.NAME_FP32, serve_latency.NAME_INT8, serve_latency.NAME_LIMIT}
    fp32, int8, limit = (rows[n] for n in (serve_latency.NAME_FP32, serve_latency.NAME_INT8, serve_latency.NAME_LIMIT))
    for r in rows.values():
        assert r["value"] > 0 and r["baseline"] > 0 and r["passed"] is None  # quick: bars not judged
        assert all(len(v) == serve_latency.QUICK.repeats for v in r["details"]["runs_s"].values())
    assert fp32["ratio"] == fp32["baseline"] / fp32["value"]  # eager seconds / ONNX Runtime seconds
    assert int8["baseline"] == fp32["value"] and int8["ratio"] == fp32["value"] / int8["value"]
    assert fp32["details"]["labels_agree_with_eager"] > 0.999  # the same model, exported
    gflop, peak = limit["details"]["scan_gflop"], limit["details"]["peak_gflop_per_s"]
    assert gflop > 0 and peak > 0 and limit["baseline"] == pytest.approx(gflop / peak)


def test_flops_per_scan_count_every_tile_of_predicts_path():
    """A 1x1 convolution 3 -> 16 channels: 2 x 3 x 16 FLOPs a pixel of every tile predict runs."""
    tile, (h, w) = 32, (80, 100)
    model = seeded_model("pointwise", 16, tile)
    tiles = len(tile_starts(h, tile, serve_latency.OVERLAP)) * len(tile_starts(w, tile, serve_latency.OVERLAP))
    flops, labels = serve_latency.scan_flops(model, scan_pixels(h, w))
    assert flops == tiles * tile * tile * 2 * 3 * 16 and labels.shape == (h, w)

"""bench/serve_latency.py: the physical limit's two measurements (FLOPs per scan, the CPU's peak) are what they
say, and the int8 choices sweep quantizes what each choice names and times it against fp32. Its quick rows (eager,
ONNX Runtime fp32 and int8 on one scan through predict's path) are checked on the whole quick run's, in
bench/tests/test_bench.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bench import serve_latency
from bench.predict import model as seeded_model
from bench.predict import scan_pixels
from poc59.inference.tiling import tile_starts


def test_flops_per_scan_count_every_tile_of_predicts_path():
    """A 1x1 convolution 3 -> 16 channels: 2 x 3 x 16 FLOPs a pixel of every tile predict runs."""
    tile, (h, w) = 32, (80, 100)
    model = seeded_model("pointwise", 16, tile)
    tiles = len(tile_starts(h, tile, serve_latency.OVERLAP)) * len(tile_starts(w, tile, serve_latency.OVERLAP))
    flops, labels = serve_latency.scan_flops(model, scan_pixels(h, w))
    assert flops == tiles * tile * tile * 2 * 3 * 16 and labels.shape == (h, w)


def _conv_weights(path) -> dict[str, tuple[bool, str]]:
    """Each Conv node of an ONNX model: (grouped, the op that produces its weight: an initializer is 'fp32')."""
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    return {
        n.name: (any(a.name == "group" and a.i != 1 for a in n.attribute), producer.get(n.input[1], "fp32"))
        for n in graph.node
        if n.op_type == "Conv"
    }


@pytest.mark.slow
def test_dense_conv_choice_leaves_grouped_convolutions_fp32_where_the_exports_quantizes_all(tmp_path):
    """The tiny preset (MobileNetV3: depthwise and dense convolutions), seeded, exported, quantized two ways."""
    from poc59.artifacts.export import to_onnx

    fp32 = tmp_path / "fp32.onnx"
    example = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    fp32.write_bytes(to_onnx(serve_latency.preset_network("tiny"), example, 18))
    batches = [np.random.default_rng(i).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8) for i in range(2)]
    for choice in ("all", "dense_conv"):
        serve_latency.quantize_choice(fp32, tmp_path / f"{choice}.onnx", choice, batches)
    every, dense = _conv_weights(tmp_path / "all.onnx"), _conv_weights(tmp_path / "dense_conv.onnx")
    grouped = sum(g for g, _ in dense.values())
    assert grouped > 0 and len(dense) - grouped > 0  # the network has both kinds
    assert {w for _, w in every.values()} == {"DequantizeLinear"}  # the export's default: every Conv int8
    assert all(w == ("fp32" if g else "DequantizeLinear") for g, w in dense.values())


@pytest.mark.slow
def test_int8_choices_rows_time_each_choice_against_fp32_per_tile():
    rows = serve_latency.int8_choices(["tiny"], ["all", "dense_conv"], threads=1, rounds=2, quick=True)
    assert [r["name"] for r in rows] == ["int8_choice_tiny_all", "int8_choice_tiny_dense_conv"]
    for r in rows:
        fp32, int8 = (serve_latency.common.median(v) for v in r["details"]["runs_s_per_tile"].values())
        assert r["value"] == pytest.approx(1000 * int8) and r["baseline"] == pytest.approx(1000 * fp32)
        assert r["ratio"] == pytest.approx(fp32 / int8) and r["passed"] is None  # quick: bars not judged
        assert all(len(v) == 2 for v in r["details"]["runs_s_per_tile"].values())
        assert 0 <= r["details"]["labels_agree_with_fp32"] <= 1 and r["details"]["threads"] == 1

"""Predict on CPU: megapixels/s against a naive tile loop, and the peak memory of a 6,000 x 4,000 scan.

Model: the `tiny` preset's network (tu-mobilenetv3_small_050 U-Net, 16 classes, seeded random weights: speed
and memory do not depend on the weights) as a native-scale (`crop`) model with 384 px tiles, overlap 0.25.

- `predict_speed`: megapixels/s of `poc59.inference.image.predict_label_map` (predict's inference path: tile rows
  streamed, tiles batched 8 at a time, blended, argmax per band) on a 2,048 x 1,536 image, against a naive
  loop over the same tiles one at a time (no batching) into a full-image float accumulator with the same
  window. Interleaved A B A B after one untimed round, medians. The labels of both must agree.
- `predict_memory`: in a fresh process, the model is built and its RSS read ("the model's own"); then
  `poc59.predict.predict_image` (the command's per-scan path with its defaults: decode, predict, label map
  PNG, overlay PNG with legend, statistics) runs on a 6,000 x 4,000 PNG; the peak RSS (VmHWM, reset before
  the image where the kernel allows) minus the model's own is the figure. Bar: at most 1.5 GB. The
  baseline column is what the full-image float32 logits alone would take (C x H x W x 4 bytes). --quick, which
  judges no bar, runs the same `memory_child` in the harness's own process (one interpreter start saved; the
  fresh process, whose heap holds only the model, is what the full figure needs; bench/tests/
  test_predict_memory.py runs that child).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import common
from bench.preload_memory import _reset_peak, _status

NAME_SPEED, NAME_MEMORY = "predict_speed", "predict_memory"
BAR_MEMORY = 1.5e9  # bytes above the model's own
CLASSES = 16
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    image: tuple[int, int]  # (height, width) of the throughput image
    big: tuple[int, int]  # (height, width) of the memory case
    tile: int
    repeats: int


FULL = Sizes(image=(1536, 2048), big=(4000, 6000), tile=384, repeats=3)
QUICK = Sizes(image=(256, 384), big=(480, 640), tile=128, repeats=1)


def scan_pixels(height: int, width: int) -> np.ndarray:
    """A structured uint8 [H, W, 3] picture (gradients and a weave), built without float temporaries."""
    x = (np.arange(width) * 251 // max(1, width)).astype(np.uint8)
    y = (np.arange(height) * 251 // max(1, height)).astype(np.uint8)
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = x[None, :]
    img[..., 1] = y[:, None]
    np.bitwise_xor(x[None, :] * np.uint8(7), y[:, None] * np.uint8(5), out=img[..., 2])
    return img


def write_scan(path: Path, height: int, width: int) -> Path:
    from PIL import Image

    if not path.exists():
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(scan_pixels(height, width)).save(tmp, compress_level=1)
        os.replace(tmp, path)
    return path


def model(kind: str, classes: int, tile: int):
    """A crop-geometry TrainedModel: `tiny` (the preset's network) or `pointwise` (a 1x1 convolution, for tests)."""
    from poc59.artifacts.card import ModelCard
    from poc59.artifacts.trained import TrainedModel
    from poc59.core.classes import ClassTable
    from poc59.model.factory import build_network
    from poc59.model.segmenter import Segmenter

    torch.manual_seed(0)
    if kind == "tiny":
        net = build_network(
            "tu-mobilenetv3_small_050", "Unet", None, classes, decoder_kwargs={"decoder_channels": [64, 32, 16, 16, 8]}
        )
    elif kind == "pointwise":
        net = torch.nn.Conv2d(3, classes, 1)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    seg = Segmenter(net, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    table = ClassTable.from_names([f"class{i}" for i in range(classes)])
    card = ModelCard(
        table,
        {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"name": kind},
        {"policy": "crop", "image_size": tile, "max_side": None},
        input_multiple=tile,
    )
    return TrainedModel(seg, card, Path(f"bench-{kind}"))


def naive_labels(segmenter, image: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """The straightforward loop: every tile alone through the network, into a full-image accumulator."""
    from poc59.inference.tiling import tile_starts, window

    _, h, w = image.shape
    win = window(tile, overlap)
    win2d = win[:, None] * win[None, :]
    acc, weight = None, torch.zeros(h, w)
    with torch.no_grad():
        for y in tile_starts(h, tile, overlap):
            for x in tile_starts(w, tile, overlap):
                out = segmenter(image[None, :, y : y + tile, x : x + tile])[0]
                if acc is None:
                    acc = torch.zeros(out.shape[0], h, w)
                acc[:, y : y + tile, x : x + tile] += out * win2d
                weight[y : y + tile, x : x + tile] += win2d
    return (acc / weight).argmax(0).to(torch.uint8)


def memory_child(
    image: str, out: str, kind: str, classes: int, tile: int, max_memory_mb: float, batch_size: int
) -> dict:
    """Peak RSS above the model's own while predict_image handles one scan (run in a fresh process)."""
    import gc
    import logging

    from poc59.inference.run import Settings, predict_image

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, keep = logging.getLogger("poc59"), Keep()
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        torch.set_flush_denormal(True)  # as the command does
        m = model(kind, classes, tile)
        gc.collect()
        reset = _reset_peak()
        own = _status("VmRSS")
        settings = Settings(
            ckpt=str(m.source), input=image, output=out, max_memory_mb=max_memory_mb, batch_size=batch_size
        )
        row = predict_image(m, Path(image), None, Path(out), settings, torch.device("cpu"), None)
        peak = _status("VmHWM")
    finally:  # run in the harness's process (--quick), the logger is left as it was
        logger.removeHandler(keep)
        logger.setLevel(level)
    return {
        "model_rss_bytes": own,
        "peak_bytes": peak,
        "added_bytes": peak - own,
        "peak_reset": reset,
        "streamed": any("read in strips" in line for line in lines),
        "seconds": row["seconds"],
        "width": row["width"],
        "height": row["height"],
        "max_memory_mb": max_memory_mb,
        "outputs": sorted(f.name for f in Path(out).iterdir()),  # what the settings had it write
    }


def measure_memory(
    image: Path,
    kind: str = "tiny",
    classes: int = CLASSES,
    tile: int = 384,
    max_memory_mb: float = 1024,
    batch_size: int = 8,
) -> dict:
    """`memory_child` in a subprocess (the tests use it too, with a pointwise stand-in)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="predict-mem-") as out:
        cmd = [
            sys.executable,
            "-m",
            "bench.predict",
            str(image),
            out,
            kind,
            str(classes),
            str(tile),
            str(max_memory_mb),
            str(batch_size),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    from poc59.inference.image import predict_label_map

    s = QUICK if quick else FULL
    torch.set_flush_denormal(True)  # as the command does
    m = model("tiny", CLASSES, s.tile)
    h, w = s.image
    pixels = scan_pixels(h, w)
    chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    megapixels = h * w / 1e6
    results: dict[str, np.ndarray | torch.Tensor] = {}
    cores: dict[str, list[float]] = {"poc59": [], "naive": []}

    def poc59() -> float:
        with common.Stopwatch() as sw:
            results["poc59"] = predict_label_map(m, pixels, overlap=0.25, batch_size=8, device="cpu")
        cores["poc59"].append(round(sw.cores, 2))
        return megapixels / sw.wall

    def naive() -> float:
        with common.Stopwatch() as sw:
            results["naive"] = naive_labels(m.segmenter, chw, s.tile, 0.25)
        cores["naive"].append(round(sw.cores, 2))
        return megapixels / sw.wall

    before = common.load()
    # one untimed round first: the network's first call at each batch shape pays one-off costs (oneDNN primitives)
    runs = common.interleaved({"poc59": poc59, "naive": naive}, s.repeats + 1)
    runs = {k: v[1:] for k, v in runs.items()}
    cores = {k: v[1:] for k, v in cores.items()}
    agree = float((torch.from_numpy(results["poc59"]) == results["naive"]).float().mean())
    if agree < 0.999:
        raise RuntimeError(f"predict and the naive loop disagree on {100 * (1 - agree):.2f} % of the pixels")
    ours, base = common.median(runs["poc59"]), common.median(runs["naive"])

    bh, bw = s.big
    big = write_scan(common.bench_dir() / f"predict-scan-{bw}x{bh}.png", bh, bw)
    if quick:  # in this process (module docstring)
        with tempfile.TemporaryDirectory(prefix="predict-mem-") as out:
            mem = {**memory_child(str(big), out, "tiny", CLASSES, s.tile, 1024, 8), "fresh_process": False}
    else:
        mem = {**measure_memory(big, "tiny", CLASSES, s.tile), "fresh_process": True}
    full_logits = CLASSES * bh * bw * 4
    title = f"tiny U-Net, crop geometry, tile {s.tile}, overlap 0.25, {CLASSES} classes"
    return [
        common.row(
            NAME_SPEED,
            f"predict on CPU, {w:,} x {h:,} image ({title})",
            ours,
            "MP/s",
            base,
            "naive loop: one tile at a time, no batching",
            ours / base,
            "x",
            common.REPORTED,
            None,  # memory is the bar (issue 6)
            quick,
            {
                "runs_mp_per_s": runs,
                "cores_used": cores,
                "labels_agree": agree,
                "torch_threads": torch.get_num_threads(),
                "load_before": before,
                "load_after": common.load(),
            },
        ),
        common.row(
            NAME_MEMORY,
            f"peak RSS above the model's own, {bw:,} x {bh:,} PNG through predict_image (defaults)"
            + (" (quick: in the harness's process)" if quick else ""),
            mem["added_bytes"] / 1e6,
            "MB",
            full_logits / 1e6,
            "full-image float32 logits alone (C x H x W x 4)",
            mem["added_bytes"] / full_logits,
            "x",
            f"<= {BAR_MEMORY / 1e6:,.0f} MB",
            mem["added_bytes"] <= BAR_MEMORY,
            quick,
            {**mem, "load": common.load()},
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="memory child: predict one scan, print the peak RSS as JSON")
    for name, kind in (
        ("image", str),
        ("out", str),
        ("kind", str),
        ("classes", int),
        ("tile", int),
        ("max_memory_mb", float),
        ("batch_size", int),
    ):
        parser.add_argument(name, type=kind)
    a = parser.parse_args()
    print(json.dumps(memory_child(a.image, a.out, a.kind, a.classes, a.tile, a.max_memory_mb, a.batch_size)))

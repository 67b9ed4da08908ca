"""predict's pyramid=true maps: the time and the memory of writing a scan's two tiled pyramidal TIFFs band by band.

The map: 20,000 x 15,000 (300 MP; --quick 1,200 x 900) in ARTeFACT's 16 classes, a label map of blocks with
thin lines through them and a confidence map of gradients with noise, made one 256-row band at a time as
predict's band loop hands them over (`poc59.inference.outputs.MapPyramids`: <stem>_classes.tif and
<stem>_confidence.tif).

- `pyramid_write`: seconds to write both pyramids from the bands, against the baseline of what predict writes
  today for the same scan, the label map PNG (`label_map_png` of the whole map + an atomic write). Interleaved
  A B A B, medians. Reported, no bar.
- `pyramid_memory`: the peak of memory traced (tracemalloc: NumPy's buffers and Python's objects) while both
  pyramids are written, in a fresh process, against the two maps' bytes whole. Bar: what predict's
  max_memory_mb sets aside for the writers (`MapPyramids.working_bytes`: 10 rows of 256-px tiles of the
  scan's width) plus the two bands handed to them: the pyramids' memory follows the width, never the height.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import common

NAME_SPEED, NAME_MEMORY = "pyramid_write", "pyramid_memory"
ROWS = 256  # predict's band height for whole-image models, and the tile height
REPO = Path(__file__).resolve().parents[1]


FULL = common.ScanSizes(height=15_000, width=20_000, repeats=2)
QUICK = common.ScanSizes(height=900, width=1_200, repeats=1)


def bands(height: int, width: int):
    """(labels, confidence) uint8 [<= ROWS, width] from top to bottom: class blocks crossed by 3 px lines, and
    a gradient confidence with noise; no full-size array is made."""
    rng = np.random.default_rng(0)
    block_x = (np.arange(width) // 173 % 16).astype(np.uint8)
    ramp_x = (np.arange(width) * 127 // max(1, width)).astype(np.uint8)
    line_x = (np.arange(width) % 409) < 3
    for y0 in range(0, height, ROWS):
        y = np.arange(y0, min(height, y0 + ROWS))
        labels = (block_x[None, :] + (y // 151 % 16).astype(np.uint8)[:, None]) % np.uint8(16)
        labels[:, line_x] = 6
        labels[(y % 311) < 3] = 6
        confidence = ramp_x[None, :] + (y * 127 // max(1, height)).astype(np.uint8)[:, None]
        confidence += rng.integers(0, 4, confidence.shape, dtype=np.uint8)
        yield labels, confidence


def write_pyramids(out: Path, height: int, width: int) -> None:
    from poc59.core.classes import ARTEFACT
    from poc59.inference.outputs import MapPyramids

    with MapPyramids(out, "scan", width, height, ARTEFACT) as maps:
        for labels, confidence in bands(height, width):
            maps.add(labels, confidence)


def write_png(out: Path, height: int, width: int) -> None:
    """The baseline: the label map whole, as predict holds it, written as its palette PNG."""
    from poc59.core.atomic import write_bytes
    from poc59.core.classes import ARTEFACT
    from poc59.inference.outputs import label_map_png

    whole = np.empty((height, width), np.uint8)
    y0 = 0
    for labels, _ in bands(height, width):
        whole[y0 : y0 + len(labels)] = labels
        y0 += len(labels)
    write_bytes(out / "scan_labels.png", label_map_png(whole, ARTEFACT))


def memory_child(out: str, height: int, width: int) -> dict:
    """The traced peak while both pyramids are written (run in a fresh process)."""
    import tracemalloc

    import poc59.inference.outputs  # imported before tracing: the modules are not the maps' memory

    tracemalloc.start()
    write_pyramids(Path(out), height, width)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sizes = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    budget = poc59.inference.outputs.MapPyramids.working_bytes(width)
    return {"peak_bytes": peak, "band_bytes": ROWS * width, "budget_bytes": budget, "file_bytes": sizes}


def measure_memory(height: int, width: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="pyramid-mem-", dir=common.bench_dir()) as out:
        cmd = [sys.executable, "-m", "bench.pyramid", out, str(height), str(width)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    megapixels = s.height * s.width / 1e6

    def timed(write) -> float:
        with tempfile.TemporaryDirectory(prefix="pyramid-", dir=common.bench_dir()) as out:
            with common.Stopwatch() as sw:
                write(Path(out), s.height, s.width)
        return sw.wall

    before = common.load()
    runs = common.interleaved({"pyramids": lambda: timed(write_pyramids), "png": lambda: timed(write_png)}, s.repeats)
    ours, base = common.median(runs["pyramids"]), common.median(runs["png"])
    mem = measure_memory(s.height, s.width)
    whole = 2 * s.height * s.width
    bar = mem["budget_bytes"] + 2 * mem["band_bytes"]
    size = f"{s.width:,} x {s.height:,} ({megapixels:,.0f} MP)"
    return [
        common.row(
            NAME_SPEED,
            f"predict pyramid=true: both tiled pyramidal TIFFs of a {size} scan, from 256-row bands",
            ours,
            "s",
            base,
            "the label map PNG predict writes today (whole map, Pillow, zlib level 1)",
            ours / base,
            "x",
            common.REPORTED,
            None,
            quick,
            {"runs_s": runs, "load_before": before, "load_after": common.load()},
        ),
        common.row(
            NAME_MEMORY,
            f"traced peak while writing both pyramids of a {size} scan",
            mem["peak_bytes"] / 1e6,
            "MB",
            whole / 1e6,
            "the two maps whole (uint8)",
            mem["peak_bytes"] / whole,
            "x",
            f"<= {bar / 1e6:,.1f} MB (predict's budget for the writers + the 2 bands given)",
            mem["peak_bytes"] <= bar,
            quick,
            {**mem, "load": common.load()},
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="memory child: write both pyramids, print the traced peak as JSON")
    parser.add_argument("out")
    parser.add_argument("height", type=int)
    parser.add_argument("width", type=int)
    a = parser.parse_args()
    print(json.dumps(memory_child(a.out, a.height, a.width)))

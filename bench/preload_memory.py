"""Peak resident memory the data layer adds: preload + one training pass, in a fresh process.

Two rows: `preload_memory`, the synthetic set at 384 px (resize: a dense [N, 3, S, S] tensor), and
`ragged_memory` (issue 16), a generated set of mixed sizes (sides 100 to 1,200 px drawn independently,
so random aspect ratios) under policy=crop, stored ragged at native scale: the peak RSS the preload adds
(setup, decoding threads included; the feed's fixed ring of batch buffers is the other row's business),
against the content's bytes (4 a content pixel). A canvas layout would hold N x 1,536^2 x 4 (canvas
side: 1,200 rounded up to the 384 px window), about 5x the content here.


In a subprocess (imports done, DataModule built): RSS is read, then `setup("fit")` and one full pass
over the training feed with its augmentation (`on_after_batch_transfer`, as training runs it); the peak
RSS (VmHWM, reset after the imports where the kernel allows) minus the RSS before setup is the figure.
Run twice, on a cold start (decoding, the cache written) and a warm one (the cache mapped); the larger
counts. The baseline is the raw uint8 bytes of the set, N x S x S x 4 (3 image bytes + 1 mask byte a
pixel). After the training pass the child also iterates the validation feed once (all of the set touched,
a second feed's buffers), reported as a detail.

Full mode measures each of the four (dense and ragged, cold and warm) in its own fresh process, so no
measurement's peak or heap holds what an earlier one left. --quick, which judges no bar, measures the four in
turn in one process (the same `child`, the peak reset before each where the kernel allows, `peak_reset` in
the details): one interpreter start instead of four.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import common
from poc59.data.decoding import canvas_side

NAME = "preload_memory"
BAR = 1.15  # x the raw uint8 bytes
MIXED = {False: 600, True: 4}  # pairs of the mixed-size set (full: about 1 GB of content; quick)
MAX_SIDE = 1200
REPO = Path(__file__).resolve().parents[1]
# what the quick rows' titles say: a later measurement in one process may reuse memory an earlier one freed
IN_TURN = {False: "", True: " (quick: the four measured in turn in one process)"}


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5\n")
        return True
    except OSError:
        return False


def mixed_set(n: int) -> Path:
    """n pairs of sides 100-1,200 px (height and width drawn independently), smooth images, blocky masks."""
    import numpy as np
    from PIL import Image

    def fill(tmp: Path) -> None:
        rng = np.random.default_rng(16)
        for k in range(n):
            h, w = (int(v) for v in rng.integers(100, MAX_SIDE + 1, 2))
            yy, xx = np.mgrid[0:h, 0:w]
            image = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
            mask = ((yy // 37 + xx // 53) % 4).astype(np.uint8)
            Image.fromarray(image).save(tmp / "images" / f"m{k:04d}.png", compress_level=1)
            Image.fromarray(mask).save(tmp / "annotations" / f"m{k:04d}.png", compress_level=1)

    return common.build_folder_once(common.bench_dir() / f"mixed-{n}", fill, f"{n} mixed-size pairs")


def child(root: str, cache_dir: str, quick: bool, ragged: bool = False) -> dict:
    import gc

    import torch  # noqa: F401  (imports before the baseline reading)

    s = common.sizes(quick)
    geometry = {"policy": "crop", "max_side": MAX_SIDE} if ragged else {}
    dm = common.datamodule(Path(root), s, Path(cache_dir), **geometry)
    gc.collect()
    reset = _reset_peak()
    rss0 = _status("VmRSS")
    dm.setup("fit")
    after_setup = _status("VmRSS")
    setup_peak = _status("VmHWM")
    for batch in dm.train_dataloader():
        dm.on_after_batch_transfer(batch, 0)
    train_peak = _status("VmHWM")
    dm.trainer.training = False
    for batch in dm.val_dataloader():
        dm.on_after_batch_transfer(batch, 0)
    return {
        "source": dm.data.source,
        "pairs": len(dm.samples),
        "raw_bytes": dm.data.nbytes,
        "content_bytes": 4 * int(dm.data.sizes.prod(1).sum()),
        "added_setup": after_setup - rss0,
        "added_setup_peak": setup_peak - rss0,
        "added_train_pass": train_peak - rss0,
        "added_train_and_val_pass": _status("VmHWM") - rss0,
        "peak_reset": reset,
        "rss_before_setup": rss0,
    }


Spec = tuple[Path, Path, bool]  # (data folder, preload cache folder, ragged) of one measurement


def _measure_all(specs: list[Spec], quick: bool) -> list[dict]:
    """`child` for each spec, in turn, in one fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    mode = "quick" if quick else "full"
    given = [str(a) for root, cache, ragged in specs for a in (root, cache, "ragged" if ragged else "dense")]
    cmd = [sys.executable, "-m", "bench.preload_memory", mode, *given]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if len(got) != len(specs):
        raise RuntimeError(f"memory child measured {len(got)} of {len(specs)}")
    return got


def _in_turn(specs: list[Spec], quick: bool) -> list[dict]:
    """Each spec's measurement: full mode, each in its own process; --quick, all in one (module docstring)."""
    return _measure_all(specs, quick) if quick else [_measure_all([spec], quick)[0] for spec in specs]


def _cold_and_warm(cold: dict, warm: dict) -> None:
    if cold["source"] != "decoded" or warm["source"] != "cache":
        raise RuntimeError(f"expected a cold and a warm start, got {cold['source']} and {warm['source']}")


def _ragged_row(cold: dict, warm: dict, quick: bool) -> dict:
    s = common.sizes(quick)
    _cold_and_warm(cold, warm)
    content = cold["content_bytes"]
    worst = max(cold["added_setup_peak"], warm["added_setup_peak"])  # the preload; the feed's ring is apart
    canvas = cold["pairs"] * 4 * canvas_side("crop", s.image_size, MAX_SIDE) ** 2  # what a canvas layout holds
    return common.row(
        "ragged_memory",
        f"policy=crop on {cold['pairs']} mixed-size pairs (sides 100-{MAX_SIDE:,} px), stored ragged: peak RSS "
        f"added by the preload (setup), worse of cold/warm{IN_TURN[quick]}",
        worst / 1e6,
        "MB",
        content / 1e6,
        "the content's uint8 bytes (4 a content pixel)",
        worst / content,
        "x content",
        f"<= {BAR}x",
        worst / content <= BAR,
        quick,
        {"cold": cold, "warm": warm, "canvas_layout_bytes": canvas, "load": common.load()},
    )


def run(quick: bool) -> list[dict]:
    s = common.sizes(quick)
    root = common.data_set(s.pairs)
    warm_dir = common.warm_cache_dir()
    common.datamodule(root, s, warm_dir).setup("fit")  # the warm cache exists (filled on first use)
    mixed = mixed_set(MIXED[quick])
    cold_dir, mixed_cache = common.scratch_dir("mem-cold-"), common.scratch_dir("mem-")
    try:
        # the ragged pair shares one cache: the cold start decodes and writes what the warm start maps
        specs = [
            (root, cold_dir, False),
            (root, warm_dir, False),
            (mixed, mixed_cache, True),
            (mixed, mixed_cache, True),
        ]
        cold, warm, ragged_cold, ragged_warm = _in_turn(specs, quick)
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
        shutil.rmtree(mixed_cache, ignore_errors=True)
    _cold_and_warm(cold, warm)
    raw = s.pairs * 4 * s.image_size**2
    worst = max(cold["added_train_pass"], warm["added_train_pass"])
    ratio = worst / raw
    ring = 3 * s.batch_size * 4 * s.image_size**2
    return [
        common.row(
            NAME,
            f"peak RSS added by setup + one training pass, worse of cold/warm ({s.pairs:,} files){IN_TURN[quick]}",
            worst / 1e6,
            "MB",
            raw / 1e6,
            "raw uint8 bytes (N x S x S x 4)",
            ratio,
            "x raw",
            f"<= {BAR}x",
            ratio <= BAR,
            quick,
            {
                "cold": cold,
                "warm": warm,
                "feed_ring_bytes": ring,
                "feed_ring_note": "each feed (train, val) keeps 3 reused batch buffers: 3 x B x S x S x 4 bytes",
                "load": common.load(),
            },
        ),
        _ragged_row(ragged_cold, ragged_warm, quick),
    ]


if __name__ == "__main__":
    mode, *given = sys.argv[1:]
    triples = [given[k : k + 3] for k in range(0, len(given), 3)]
    print(json.dumps([child(root, cache, mode == "quick", layout == "ragged") for root, cache, layout in triples]))

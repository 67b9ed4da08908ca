"""Peak resident memory the data layer adds: preload + one training pass, in a fresh process.

In a subprocess (imports done, DataModule built): RSS is read, then `setup("fit")` and one full pass
over the training feed with its augmentation (`on_after_batch_transfer`, as training runs it); the peak
RSS (VmHWM, reset after the imports where the kernel allows) minus the RSS before setup is the figure.
Run twice, on a cold start (decoding, the cache written) and a warm one (the cache mapped); the larger
counts. The baseline is the raw uint8 bytes of the set, N x S x S x 4 (3 image bytes + 1 mask byte a
pixel). After the training pass the child also iterates the validation feed once (all of the set touched,
a second feed's buffers), reported as a detail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import common

NAME = "preload_memory"
BAR = 1.15  # x the raw uint8 bytes
REPO = Path(__file__).resolve().parents[1]


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


def child(root: str, cache_dir: str, quick: bool) -> dict:
    import gc

    import torch  # noqa: F401  (imports before the baseline reading)

    s = common.sizes(quick)
    dm = common.datamodule(Path(root), s, Path(cache_dir))
    gc.collect()
    reset = _reset_peak()
    rss0 = _status("VmRSS")
    dm.setup("fit")
    after_setup = _status("VmRSS")
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
        "added_setup": after_setup - rss0,
        "added_train_pass": train_peak - rss0,
        "added_train_and_val_pass": _status("VmHWM") - rss0,
        "peak_reset": reset,
        "rss_before_setup": rss0,
    }


def _measure(root: Path, cache_dir: Path, quick: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bench.preload_memory", str(root), str(cache_dir), "quick" if quick else "full"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    s = common.sizes(quick)
    root = common.data_set(s.pairs)
    warm_dir = common.warm_cache_dir()
    common.datamodule(root, s, warm_dir).setup("fit")  # the warm cache exists (filled on first use)
    cold_dir = common.scratch_dir("mem-cold-")
    try:
        cold = _measure(root, cold_dir, quick)
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    warm = _measure(root, warm_dir, quick)
    if cold["source"] != "decoded" or warm["source"] != "cache":
        raise RuntimeError(f"expected a cold and a warm start, got {cold['source']} and {warm['source']}")
    raw = s.pairs * 4 * s.image_size**2
    worst = max(cold["added_train_pass"], warm["added_train_pass"])
    ratio = worst / raw
    ring = 3 * s.batch_size * 4 * s.image_size**2
    return [
        common.row(
            NAME,
            f"peak RSS added by setup + one training pass, worse of cold/warm ({s.pairs:,} files)",
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
        )
    ]


if __name__ == "__main__":
    root_arg, cache_arg, mode = sys.argv[1:4]
    print(json.dumps(child(root_arg, cache_arg, mode == "quick")))

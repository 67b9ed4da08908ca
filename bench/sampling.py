"""Issue 16: do class-aware windows (`data.crop_sampling.rare_fraction`) find the rare classes?

The same model, steps and seed trained with uniform windows (rare_fraction=0) and with class-aware ones,
interleaved (uniform, aware, uniform, aware over the two sets), each a `python -m poc59.train` run as a
user starts it, on (a) the built-in synthetic set at native scale under policy=crop and (b) CrackForest
(`../shared/data/crackforest`, background and thin cracks) under policy=crop. Reported from each run's
summary.json (best val/mIoU, validation tiles, never sampled): val mIoU, the mean IoU of the rarer half
of the classes present in training (by the run's class_weights.json pixel counts), and crack IoU.
Bars: synthetic val mIoU >= 1.1x uniform; CrackForest crack IoU >= 0.97x uniform.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import common

RARE_FRACTION = 0.25  # the class-aware share measured against uniform: conf/data/artefact.yaml's default
CRACKFOREST = Path(__file__).resolve().parents[2] / "shared" / "data" / "crackforest"
COMMON = (
    "encoder=cpu_small",
    "data.policy=crop",
    "data.image_size=128",
    "data.batch_size=16",
    "trainer.enable_progress_bar=false",
    "callbacks.val_overlays=null",
    "seed=0",
)
SETS = {
    "synthetic": ("data.synthetic.n=160", "data.synthetic.aug_copies=0", "data.max_side=384"),
    "crackforest": ("data=artefact", f"data.root={CRACKFOREST}", "data.max_side=480"),
}
EPOCHS = {False: 12, True: 1}  # full, quick
QUICK = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=2")  # proves it runs, in seconds
QUICK_SETS = {"synthetic": ("data.synthetic.n=24",), "crackforest": ()}


def run(quick: bool) -> list[dict]:
    scratch = common.scratch_dir("sampling-")
    env = {**os.environ, "POC59_CACHE": str(scratch / "cache")}
    results: dict[tuple[str, float], dict] = {}
    try:
        for name in SETS:  # interleaved: uniform, then class-aware, on one set, then the other
            for rare in (0.0, RARE_FRACTION):
                results[name, rare] = _train(scratch, env, name, rare, quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    syn_u, syn_a = results["synthetic", 0.0], results["synthetic", RARE_FRACTION]
    cf_u, cf_a = results["crackforest", 0.0], results["crackforest", RARE_FRACTION]
    details = {f"{n} rare_fraction={r}": v for (n, r), v in results.items()}
    what = f"rare_fraction={RARE_FRACTION} against uniform windows, {EPOCHS[quick]} epoch(s), same seed"
    rows = [
        _row(
            "sampling_synthetic",
            f"synthetic set at native scale (policy=crop, 128 px windows), {what}: best val mIoU",
            syn_a["val_miou"],
            syn_u["val_miou"],
            1.1,
            quick,
            details,
        ),
        _row(
            "sampling_rare_half",
            f"synthetic set, {what}: mean val IoU of the rarer half of the classes (by training pixels)",
            syn_a["rare_half_iou"],
            syn_u["rare_half_iou"],
            None,
            quick,
            details,
        ),
        _row(
            "sampling_crackforest",
            f"CrackForest (policy=crop, 128 px windows), {what}: best val crack IoU",
            cf_a["crack_iou"],
            cf_u["crack_iou"],
            0.97,
            quick,
            details,
        ),
    ]
    return rows


def _row(name: str, title: str, aware: float, uniform: float, bar: float | None, quick: bool, details: dict) -> dict:
    """One figure of class-aware windows against uniform ones (%), judged against `bar` x uniform (None: reported)."""
    return common.row(
        name,
        title,
        100 * aware,
        "%",
        100 * uniform,
        "uniform windows (rare_fraction=0), same model, steps and seed",
        aware / uniform if uniform else float("inf"),
        "x",
        f">= {bar:g}x" if bar is not None else common.REPORTED,
        aware >= bar * uniform if bar is not None else None,
        quick,
        details,
    )


def _train(scratch: Path, env: dict, name: str, rare: float, quick: bool) -> dict:
    run_dir = scratch / f"{name}-{rare}"
    cmd = [
        sys.executable,
        "-m",
        "poc59.train",
        *COMMON,
        *SETS[name],
        f"trainer.max_epochs={EPOCHS[quick]}",
        *((*QUICK, *QUICK_SETS[name]) if quick else ()),
        f"data.crop_sampling.rare_fraction={rare}",
        f"run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    weights = json.loads((run_dir / "class_weights.json").read_text())
    pixels = dict(zip(weights["names"], weights["counts"]))
    present = sorted((p, n) for n, p in pixels.items() if p > 0)
    rare_half = [n for _, n in present[: max(1, len(present) // 2)]]
    iou = summary["val/IoU"]
    scored = [iou[n] for n in rare_half if iou.get(n) is not None]
    return {
        "val_miou": summary["val/mIoU"],
        "rare_half": rare_half,
        "rare_half_iou": sum(scored) / len(scored) if scored else 0.0,
        "crack_iou": iou.get("crack") or 0.0,
        "val_iou": iou,
        "wall_time_s": summary["wall_time_s"],
        "command": " ".join(cmd[1:]),
    }

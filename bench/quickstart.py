"""The quickstart's promise (issue 29 item 16): `python -m poc59.train experiment=quickstart` from an empty
cache, at threads=1 and threads=2, over three training seeds.

Each run is the command as a user runs it, in a fresh process with its own empty `POC59_CACHE` (so the
synthetic set is generated, decoded and cached inside the timed span, as on a clean clone), with
`threads=N seed=S` added; its own `summary.json` gives the score. Runs alternate threads 1, 2 for each
seed, so drift in the machine's load falls on both counts. Two bars, on every run: the wall time from
launch to exit within 4 minutes, and a best `val/mIoU` at least 2.2x that of predicting Clean everywhere
on the same validation images (`baseline_val/mIoU`, computed by the same run under the same
convention). The rows quote the worst run and the spread (min / median / max); the details hold every
run. The score depends on the thread count and on the CPU's floating-point arithmetic, not on the
load: the same machine, threads and seed give the same score. --quick runs one seed at both thread
counts on 8 images at 64 px for one epoch: it proves the harness, not the bars.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import common

NAME_TIME, NAME_SCORE = "quickstart_time", "quickstart_score"
BUDGET_S = 240.0  # issue 29: under 4 minutes from the command's start, data generation included
BAR_RATIO = 2.2  # issue 29: at least 2.2x the all-Clean val/mIoU, on every seed and thread count
SEEDS = {False: (0, 1, 2), True: (0,)}  # training seeds (the split, shuffling, augmentation, initialisation)
THREADS = (1, 2)
QUICK = ("data.synthetic.n=8", "data.image_size=64", "trainer.max_epochs=1")  # proves the harness, in seconds
COMMAND = "python -m poc59.train experiment=quickstart"


def run(quick: bool) -> list[dict]:
    runs = [_train(seed, threads, quick) for seed in SEEDS[quick] for threads in THREADS]
    walls = [r["wall_s"] for r in runs]
    ratios = [r["ratio"] for r in runs]
    slowest = max(runs, key=lambda r: r["wall_s"])
    worst = min(runs, key=lambda r: r["ratio"])
    seeds = ", ".join(map(str, SEEDS[quick]))
    what = f"{COMMAND}, empty cache, seeds {seeds} x threads 1, 2 ({len(runs)} runs" + (
        ", quick: 8 images, 64 px, 1 epoch)" if quick else ")"
    )
    details = {
        "runs": runs,
        "wall_s": _spread(walls),
        "ratio": _spread(ratios),
        "wall_s_by_threads": {str(t): _spread([r["wall_s"] for r in runs if r["threads"] == t]) for t in THREADS},
        "ratio_by_threads": {str(t): _spread([r["ratio"] for r in runs if r["threads"] == t]) for t in THREADS},
    }
    return [
        common.row(
            NAME_TIME,
            f"{what}: launch to exit, data generation included; the slowest run "
            f"(min / median / max {_mmm(walls, '{:.0f}')} s)",
            slowest["wall_s"],
            "s",
            BUDGET_S,
            "the budget (4 minutes)",
            slowest["wall_s"] / BUDGET_S,
            "of the budget",
            f"<= {BUDGET_S:.0f} s, every run",
            all(w <= BUDGET_S for w in walls),
            quick,
            details,
        ),
        common.row(
            NAME_SCORE,
            f"{what}: best val/mIoU from summary.json ({runs[0]['metric_convention']}); the worst run "
            f"(x all-Clean min / median / max {_mmm(ratios, '{:.2f}')})",
            100 * worst["val_miou"],
            "%",
            100 * worst["clean_miou"],
            "predicting Clean everywhere, same validation images and convention",
            worst["ratio"],
            "x",
            f">= {BAR_RATIO:g}x, every run",
            all(r >= BAR_RATIO for r in ratios),
            quick,
            details,
        ),
    ]


def _train(seed: int, threads: int, quick: bool) -> dict:
    """One quickstart run in a fresh process with an empty cache: its wall time and its summary's figures."""
    scratch = common.scratch_dir(f"quickstart-s{seed}-t{threads}-")
    try:
        cmd = [
            sys.executable,
            "-m",
            "poc59.train",
            "experiment=quickstart",
            f"threads={threads}",
            f"seed={seed}",
            f"run_dir={scratch / 'run'}",
            "trainer.enable_progress_bar=false",
            *(QUICK if quick else ()),
        ]
        env = {**os.environ, "POC59_CACHE": str(scratch / "cache")}  # HF_HUB_OFFLINE: set by bench/run.py
        before = common.load()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        summary = json.loads((Path(scratch) / "run" / "summary.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    miou, clean = summary["val/mIoU"], summary["baseline_val/mIoU"]
    return {  # seed and threads as the run recorded them: what it really ran with
        "seed": summary["provenance"]["seed"],
        "threads": summary["provenance"]["threads"],
        "wall_s": round(wall, 1),
        "val_miou": miou,
        "clean_miou": clean,
        "ratio": miou / clean if clean else float("inf"),
        "command": " ".join(["python", *cmd[1:]]),
        "run_wall_time_s": summary["wall_time_s"],
        "epochs": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_images_per_s": summary["train_images_per_s"],
        "val/IoU": summary["val/IoU"],
        "metric_convention": summary["metric_convention"],
        "load_before": before,
        "load_after": common.load(),
    }


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _mmm(values: list[float], fmt: str) -> str:
    s = _spread(values)
    return " / ".join(fmt.format(s[k]) for k in ("min", "median", "max"))

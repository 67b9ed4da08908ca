"""Issue 15: does the ensemble of a cross-validation's folds beat its best single fold on the held-out test split?

`python -m poc59.train experiment=[quickstart,cv] data.cv.folds=3 data.test_fraction=0.2` as a user runs
it (the quickstart's synthetic set, encoder and schedule; one run per fold, in a fresh POC59_CACHE), then
`evaluate_run` scores each fold's best.ckpt and their ensemble (the members' softmax probabilities
averaged) on the same test images, which no fold trained or validated on. The figure is the ensemble's
test mIoU over the best fold's (no bar: it is reported). --quick: 16 images at 64 px, batches of 4, 1 epoch,
each fold trained in the harness's process (`bench.composed.train_here`, with `data.cv.fold=k` as the sweep
gives each job), without the interpreter start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import common
from bench.composed import train_here
from poc59.evaluation.run import evaluate_run

NAME = "fold_ensemble"
FOLDS = 3
# 16 images: about 3 for the test split, and 2 training batches of 4 in each fold
QUICK = ("data.synthetic.n=16", "data.image_size=64", "data.batch_size=4", "trainer.max_epochs=1")


def run(quick: bool) -> list[dict]:
    scratch = common.scratch_dir("ensemble-")
    env = {**os.environ, "POC59_CACHE": str(scratch / "cache")}
    try:
        sweep = scratch / "sweep"
        run = [
            "experiment=[quickstart,cv]",
            f"data.cv.folds={FOLDS}",
            "data.test_fraction=0.2",
            "trainer.enable_progress_bar=false",
            *(QUICK if quick else ()),
        ]
        cmd = [sys.executable, "-m", "poc59.train", *run, f"hydra.sweep.dir={sweep}"]
        if quick:  # each fold in this process, as the sweep's jobs would run it (module docstring)
            for k in range(FOLDS):
                train_here([*run, f"data.cv.fold={k}"], sweep / str(k), env["POC59_CACHE"])
        else:
            proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        runs = [sweep / str(k) for k in range(FOLDS)]
        old = os.environ.get("POC59_CACHE")
        os.environ["POC59_CACHE"] = env["POC59_CACHE"]
        try:
            single = [_test_miou(run_dir=r, out=scratch / f"eval-{r.name}") for r in runs]
            ensemble = _test_miou(run_dirs=[str(r) for r in runs], out=scratch / "eval-ensemble")
        finally:
            os.environ.pop("POC59_CACHE") if old is None else os.environ.update(POC59_CACHE=old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = max(m["miou"] for m in single)
    details = {
        "command": " ".join(cmd[1:]),
        "fold_test_miou": [m["miou"] for m in single],
        "fold_test_interval": [m["miou_ci"] for m in single],
        "ensemble_test_miou": ensemble["miou"],
        "ensemble_test_interval": ensemble["miou_ci"],
        "test_images": ensemble["num_images"],
        "metric_convention": ensemble["metric_convention"],
    }
    what = f"{FOLDS}-fold ensemble of experiment=[quickstart,cv]" + (" (quick: 16 images, 64 px, 1 epoch)" * quick)
    return [
        common.row(
            NAME,
            f"{what}: test mIoU ({ensemble['metric_convention']}), softmax probabilities averaged",
            100 * ensemble["miou"],
            "%",
            100 * best,
            "the best single fold's test mIoU, same test images",
            ensemble["miou"] / best if best else float("inf"),
            "x",
            common.REPORTED,
            None,
            quick,
            details,
        )
    ]


def _test_miou(out: Path, **which) -> dict:
    return evaluate_run(**which, split="test", resamples=200, pictures=False, device="cpu", out=out)

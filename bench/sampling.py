"""Issue 16: do class-aware windows (`data.crop_sampling.rare_fraction`) find the rare classes?

The same model, steps and seed trained with uniform windows (rare_fraction=0) and with class-aware ones,
interleaved (uniform, aware, uniform, aware over the two sets), each a `python -m poc59.train` run as a
user starts it, on (a) the built-in synthetic set at native scale under policy=crop and (b) CrackForest
(`tests/fixtures/crackforest`, background and thin cracks) under policy=crop. Reported from each run's
summary.json (best val/mIoU, validation tiles, never sampled): val mIoU, the mean IoU of the rarer half
of the classes present in training (by the run's class_weights.json pixel counts), and crack IoU.
Bars: synthetic val mIoU >= 1.1x uniform; CrackForest crack IoU >= 0.97x uniform.

--quick trains every run in the harness's process (`bench.composed.train_here`: the same composed config, `train`
and summary.json, uniform first), without the six interpreter starts. The figures are scores, not times, and
each run seeds everything it draws from (`seed_everything` at its start), so running in sequence in one process
changes none of them.

A third pair, (c) tiny defects, is the case the issue started from (a few-class set whose defects cover
well under 1 % of the pixels, where uniform windows let the model collapse to the background): the
synthetic artworks at native scale (300-800 px) with two labels, `spot` for the pixels of the small
round damage (Puncture and Burn marks, 0.03 % of the labelled pixels, in about 8 % of the uniform
128 px windows) and `background` for everything else, other damage included. Bar: class-aware windows
learn the spot (IoU at least 1 point above uniform windows').
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common
from bench.composed import train_here
from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.data.synthetic import render

RARE_FRACTION = 0.25  # the class-aware share measured against uniform: conf/data/artefact.yaml's default
CRACKFOREST = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "crackforest"  # shipped with the tests
COMMON = (
    "encoder=cpu_small",
    "data.policy=crop",
    "data.image_size=128",
    "data.batch_size=16",
    "trainer.enable_progress_bar=false",
    "callbacks.val_overlays=null",
    "seed=0",
)
TINY = "tiny-defects"  # the set of (c): built once by `tiny_defect_set`, its folder given on the command line
SETS = {
    "synthetic": ("data.synthetic.n=160", "data.synthetic.aug_copies=0", "data.max_side=384"),
    "crackforest": ("data=artefact", f"data.root={CRACKFOREST}", "data.max_side=480"),
    TINY: ("data=artefact", "data.max_side=800", "trainer.check_val_every_n_epoch=3"),
}
# Epochs (full, quick). Tiny defects, measured: uniform windows stay at spot IoU 0 for 60 epochs,
# class-aware ones reach 2 % at 20 and 8.5 % at 60.
EPOCHS = {"synthetic": {False: 12, True: 1}, "crackforest": {False: 12, True: 1}, TINY: {False: 30, True: 1}}
QUICK = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=2")  # proves it runs, in seconds
QUICK_SETS = {"synthetic": ("data.synthetic.n=8",), "crackforest": (), TINY: ("trainer.check_val_every_n_epoch=1",)}
TINY_PAIRS = {False: 200, True: 8}  # images of the tiny-defect set
SPOT_CLASSES = ("Puncture", "Burn marks")  # the synthetic classes labelled `spot` in (c)


def run(quick: bool) -> list[dict]:
    scratch = common.scratch_dir("sampling-")
    env = {**os.environ, "POC59_CACHE": str(scratch / "cache")}
    tiny = tiny_defect_set(TINY_PAIRS[quick])
    results: dict[tuple[str, float], dict] = {}
    try:
        for name in SETS:  # interleaved: uniform, then class-aware, on one set, then the next
            extra = (f"data.root={tiny}",) if name == TINY else ()
            for rare, got in _train_pair(scratch, env, name, quick, extra).items():
                results[name, rare] = got
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    syn_u, syn_a = results["synthetic", 0.0], results["synthetic", RARE_FRACTION]
    cf_u, cf_a = results["crackforest", 0.0], results["crackforest", RARE_FRACTION]
    tiny_u, tiny_a = results[TINY, 0.0], results[TINY, RARE_FRACTION]
    details = {f"{n} rare_fraction={r}": v for (n, r), v in results.items()}
    what = f"rare_fraction={RARE_FRACTION} against uniform windows, {EPOCHS['synthetic'][quick]} epoch(s), same seed"
    tiny_what = f"rare_fraction={RARE_FRACTION} against uniform windows, {EPOCHS[TINY][quick]} epoch(s), same seed"
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
        common.row(
            "sampling_tiny_defects",
            f"tiny defects (synthetic artworks at native scale, 2 classes, the spot class 0.03 % of the "
            f"pixels; policy=crop, 128 px windows), {tiny_what}: best val spot IoU",
            100 * tiny_a["spot_iou"],
            "%",
            100 * tiny_u["spot_iou"],
            "uniform windows (rare_fraction=0), same model, steps and seed",
            tiny_a["spot_iou"] / tiny_u["spot_iou"] if tiny_u["spot_iou"] else float("inf"),
            "x",
            ">= uniform + 1 point (learns the spot)",
            tiny_a["spot_iou"] >= tiny_u["spot_iou"] + 0.01,
            quick,
            details,
        ),
    ]
    return rows


def tiny_defect_set(pairs: int) -> Path:
    """The first `pairs` synthetic artworks (seed 0) with two labels: `spot` where the synthetic label is
    Puncture or Burn marks, `background` elsewhere (other damage included), ignore kept; made once."""
    spot = np.array([ARTEFACT.names.index(c) for c in SPOT_CLASSES])

    def fill(tmp: Path) -> None:
        for i in range(pairs):
            image, labels, _, _ = render(i, common.SEED)
            mask = np.where(labels == IGNORE_INDEX, IGNORE_INDEX, np.isin(labels, spot)).astype(np.uint8)
            Image.fromarray(image).save(tmp / "images" / f"{i:04d}.png")
            Image.fromarray(mask, "L").save(tmp / "annotations" / f"{i:04d}.png")
        (tmp / "classes.json").write_text(json.dumps(["background", "spot"]))

    return common.build_folder_once(common.bench_dir() / f"tiny-defects-{pairs}", fill, f"{pairs} tiny-defect pairs")


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


RARES = (0.0, RARE_FRACTION)  # uniform windows first, then class-aware ones


def _train_pair(scratch: Path, env: dict, name: str, quick: bool, extra: tuple[str, ...] = ()) -> dict[float, dict]:
    """Set `name` trained at each of RARES: {rare_fraction: its figures}. Full mode: one `python -m poc59.train`
    per rare_fraction; --quick: each run in this process (the module docstring says why that keeps the figures)."""
    overrides = [
        *COMMON,
        *SETS[name],
        *extra,
        f"trainer.max_epochs={EPOCHS[name][quick]}",
        *((*QUICK, *QUICK_SETS[name]) if quick else ()),
    ]
    out = {}
    for rare in RARES:
        run_dir = scratch / f"{name}-{rare}"
        run = [*overrides, f"data.crop_sampling.rare_fraction={rare}"]
        cmd = [sys.executable, "-m", "poc59.train", *run, f"run_dir={run_dir}"]
        if quick:
            train_here(run, run_dir, env["POC59_CACHE"])
        else:
            _call(cmd, scratch, env)
        out[rare] = _figures(run_dir, cmd)
    return out


def _call(cmd: list[str], scratch: Path, env: dict) -> None:
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def _figures(run_dir: Path, cmd: list[str]) -> dict:
    """One run's figures from its summary.json and class_weights.json."""
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
        "spot_iou": iou.get("spot") or 0.0,
        "val_iou": iou,
        "wall_time_s": summary["wall_time_s"],
        "command": " ".join(cmd[1:]),
    }

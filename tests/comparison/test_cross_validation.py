"""A real 2-fold cross-validation of tiny runs (experiment=cv through the local launcher), compared:
per fold, over folds, and pooled out of fold, against a by-hand sum of the folds' confusion matrices."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import pooled_miou_by_hand
from poc59.compare import main
from poc59.comparison.cross_validation import POOLED_CONVENTION
from poc59.evaluation.run import read_per_image
from poc59.training.sweeps import expected_jobs, sweep_status

TINY = (
    "encoder=tiny",
    "data.synthetic.n=12",
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.val_overlays=null",
)


def _train(sweep: Path, cwd: Path, *overrides: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "poc59.train", *overrides, *TINY, f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def cv_sweep(tmp_path_factory):
    """`python -m poc59.train experiment=cv data.cv.folds=2 encoder.name=a,b hydra/launcher=local`: four jobs,
    one command, each its own process (submitit's local executor, as on a workstation), so both encoders'
    processes must draw the same partition on their own. Two folds are enough for what the tests below check
    (each fold's images, pooling every image once, a fold missing, the ranking); each fold more costs two
    processes."""
    tmp = tmp_path_factory.mktemp("cv")
    sweep = tmp / "sweep"
    _train(
        sweep,
        tmp,
        "experiment=cv",
        "data.cv.folds=2",
        "encoder.name=tu-mobilenetv3_small_050,tu-lcnet_050",
        "hydra/launcher=local",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
    )
    return sweep


@pytest.mark.slow  # builds the sweep: four train processes, 256 s at a load of 10-12
def test_one_command_runs_every_fold_of_every_encoder(cv_sweep):
    jobs = expected_jobs(cv_sweep)
    assert len(jobs) == 4 and sweep_status(cv_sweep)["counts"]["finished"] == 4
    records = [json.loads((cv_sweep / str(n) / "split.json").read_text())["cv"] for n in range(4)]
    assert sorted(r["fold"] for r in records) == [0, 0, 1, 1]
    assert len({r["partition_fingerprint"] for r in records}) == 1  # one partition for both encoders
    vals = {}
    for n, r in enumerate(records):
        val = json.loads((cv_sweep / str(n) / "split.json").read_text())["val"]
        assert vals.setdefault(r["fold"], val) == val  # the same fold holds the same images for each encoder


@pytest.mark.slow  # shares the sweep; evaluates its four runs here: 40-110 s at a load of 10-12
def test_compare_pools_the_folds_out_of_fold(cv_sweep):
    assert main([f"sweep={cv_sweep}"]) == 0  # evaluate=true: each fold's per-image matrices first
    result = json.loads((cv_sweep / "comparison" / "comparison.json").read_text())
    configs = {c["encoder"]: c for c in result["configurations"]}
    assert sorted(configs) == ["tu-lcnet_050", "tu-mobilenetv3_small_050"]  # folds grouped, encoders apart
    for c in configs.values():
        runs = sorted(c["runs"])
        assert c["folds"] == 2 and len(runs) == 2
        metrics = [Path(r) / "evaluation" / "val" / "metrics.json" for r in runs]
        assert c["pooled_miou"] == pytest.approx(pooled_miou_by_hand(metrics), abs=1e-9)
        lo, hi = c["pooled_interval"]
        assert lo <= c["pooled_miou"] <= hi and c["score"] == c["pooled_miou"]
        per_fold = c["cv"]["per_fold"]
        assert [f["fold"] for f in per_fold] == [0, 1]
        summaries = {r: json.loads((Path(r) / "summary.json").read_text()) for r in runs}
        assert sorted(f["val_mIoU"] for f in per_fold) == sorted(s["val/mIoU"] for s in summaries.values())
        folds = [f["val_mIoU"] for f in per_fold]
        assert c["val_mIoU"]["mean"] == pytest.approx(np.mean(folds))
        assert c["val_mIoU"]["std"] == pytest.approx(np.std(folds, ddof=1)) and c["val_mIoU"]["over"] == "folds"
        # every image outside the test split scored once, by the fold that did not train on it
        ids = [i for m in metrics for i in read_per_image(m.parent / "per_image_confusion.npz")[0]]
        assert len(ids) == len(set(ids)) == c["cv"]["pooled_images"] == 12
        assert set(c["cv"]["pooled_groups"]) == {"material", "content"}
        assert sum(g["num_images"] for g in c["cv"]["pooled_groups"]["material"].values()) == 12
    ranked = sorted(configs.values(), key=lambda c: c["rank"])
    assert ranked[0]["pooled_miou"] >= ranked[1]["pooled_miou"] and ranked[0]["best"]
    assert result["conventions"]["pooled_miou"].startswith(POOLED_CONVENTION)
    table = {r["encoder"]: r for r in csv.DictReader((cv_sweep / "comparison" / "comparison.csv").open())}
    for encoder, c in configs.items():
        assert table[encoder]["folds"] == "2" and float(table[encoder]["pooled_mIoU"]) == pytest.approx(
            c["pooled_miou"]
        )
    md = (cv_sweep / "comparison" / "comparison.md").read_text()
    assert "## Cross-validation" in md and "pooled over 2 folds" in md and "Seed repeats" not in md
    assert "Pooled out-of-fold mIoU by material" in md


@pytest.mark.slow  # shares the sweep
def test_a_sweep_of_several_configurations_is_not_one_fold_ensemble(cv_sweep):
    from poc59.artifacts.ensemble import members_of
    from poc59.artifacts.trained import ModelLoadError

    with pytest.raises(ModelLoadError, match="each fold once, one partition"):
        members_of(sweep=cv_sweep)  # two encoders' folds: name one's runs with run_dirs=


@pytest.mark.slow  # shares the sweep
def test_a_missing_fold_is_not_pooled_and_says_so(cv_sweep, tmp_path):
    part = tmp_path / "part"
    keep = shutil.ignore_patterns("tensorboard", "csv")
    n = next(
        n for n in range(4) if json.loads((cv_sweep / str(n) / "summary.json").read_text())["encoder"] == "tu-lcnet_050"
    )
    one = shutil.copytree(cv_sweep / str(n), part / str(n), ignore=keep)  # one of the encoder's two folds
    assert main([f"runs=[{one}]", "evaluate=false", f"out={tmp_path / 'cmp'}"]) == 0
    c = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["configurations"][0]
    assert c["pooled_miou"] is None and c["rank"] is None
    missing = {0, 1} - {f["fold"] for f in c["cv"]["per_fold"]}
    assert c["cv"]["pooled_note"] == f"not pooled: fold(s) {missing.pop()} did not finish"


@pytest.mark.slow  # shares the sweep (and the session's trained_run)
def test_a_plain_split_run_is_not_ranked_with_folds(cv_sweep, trained_run, tmp_path, caplog):
    """A run validated on a plain split (the session's shared tiny run, read only) beside a fold's run."""
    assert main([f"runs=[{cv_sweep / '0'},{trained_run}]", "evaluate=false", f"out={tmp_path / 'no'}"]) == 2
    assert "refusing to rank" in caplog.text and "cv:" in caplog.text


@pytest.mark.slow  # a sweep of two trainings in one train process: 103 s at a load of 10-12
def test_leave_one_material_out_reports_each_held_out_material(tmp_path):
    sweep = tmp_path / "lomo"
    _train(sweep, tmp_path, "experiment=leave_one_material_out", "data.cv.min_images=3")
    jobs = expected_jobs(sweep)
    assert [j[0] for j in jobs] == ["data.cv.fold='Ceramic'", "data.cv.fold='other'"]  # as multirun.yaml lists them
    assert main([f"sweep={sweep}"]) == 0
    (c,) = json.loads((sweep / "comparison" / "comparison.json").read_text())["configurations"]
    assert c["cv"]["by"] == "material" and [f["value"] for f in c["cv"]["per_fold"]] == ["Ceramic", "other"]
    held = json.loads((sweep / "0" / "split.json").read_text())
    assert held["cv"]["value"] == "Ceramic" and c["pooled_miou"] is not None
    md = (sweep / "comparison" / "comparison.md").read_text()
    assert "0=Ceramic" in md and "1=other" in md and "(by material)" in md

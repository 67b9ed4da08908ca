"""The metrics spine: what the registry holds reaches every command, and one setting picks the best epoch.

Boundary IoU is registered in poc59.metrics only (src/poc59/metrics/boundary.py); these tests show it in
training's history, summary.json, the checkpoint's card and the CSV log, in evaluate's metrics.json (with
bootstrap intervals, recomputable from the per-image statistics beside it) and in compare's Markdown, CSV
and JSON tables.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SMALL
from poc59.comparison.run import compare
from poc59.evaluation.run import evaluate_run, read_per_image_statistics
from poc59.metrics import registry


@pytest.fixture(scope="module")
def spine(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shared run copied, evaluated and compared once."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("spine") / "run"))
    metrics = evaluate_run(run_dir=run, pictures=False, resamples=100, device="cpu")
    out = run.parent / "comparison"
    result = compare(runs=[run], out=out, evaluate=False)
    return {"run": run, "metrics": metrics, "out": out, "result": result}


def test_boundary_iou_is_in_training_records(spine):
    run = spine["run"]
    summary = json.loads((run / "summary.json").read_text())
    names = summary["classes"]["names"]
    assert set(summary["val/BoundaryIoU"]) == set(names) and "val/mBoundaryIoU" in summary
    best = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    assert summary["val/BoundaryIoU"] == best["BoundaryIoU"] and summary["val/mBoundaryIoU"] == best["mBoundaryIoU"]
    defined = [v for v in best["BoundaryIoU"].values() if v is not None]
    assert defined and all(0.0 <= v <= 1.0 for v in defined)
    # the card of the best checkpoint says what these weights scored, Boundary IoU included
    card = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"][
        "card"
    ]
    assert card["metrics"]["validation"]["val/mBoundaryIoU"] == summary["val/mBoundaryIoU"]
    # logged every epoch, per class by name (the CSV logger's columns)
    (log,) = (run / "csv").glob("version_*/metrics.csv")
    header = next(csv.reader(log.open()))
    assert "val/mBoundaryIoU" in header and "train/mBoundaryIoU" in header
    assert any(h.startswith("val/BoundaryIoU/") for h in header)


def test_boundary_iou_is_in_metrics_json_with_intervals_from_the_per_image_statistics(spine):
    m, names = spine["metrics"], spine["metrics"]["classes"]["names"]
    on_disk = json.loads((Path(m["folder"]) / "metrics.json").read_text())
    assert on_disk["mboundary_iou"] == m["mboundary_iou"] and on_disk["mboundary_iou_ci"] is not None
    ids, stats = read_per_image_statistics(Path(m["folder"]) / m["per_image_confusion"])
    assert len(ids) == m["num_images"] and set(stats) == set(registry.STATISTICS)
    inter, union = stats["boundary"].sum(0)
    for c, n in enumerate(names):
        row = m["per_class"][n]
        if union[c] == 0:
            assert row["boundary_iou"] is None
            continue
        assert row["boundary_iou"] == pytest.approx(inter[c] / union[c])
        lo, hi = row["boundary_iou_ci"]
        assert lo <= hi
    defined = [inter[c] / union[c] for c in range(len(names)) if union[c] > 0]
    assert m["mboundary_iou"] == pytest.approx(float(np.mean(defined)))
    # the record says what each key is, from the registry
    assert m["metrics"]["boundary_iou"]["per_class"] and "contour" in m["metrics"]["boundary_iou"]["meaning"]


def test_boundary_iou_is_in_compares_tables(spine):
    out, result = spine["out"], spine["result"]
    summary = json.loads((spine["run"] / "summary.json").read_text())
    (config,) = result["configurations"]
    assert config["per_class_metrics"]["boundary_iou"] == pytest.approx(summary["val/BoundaryIoU"])
    assert config["metrics"]["mboundary_iou"] == pytest.approx(summary["val/mBoundaryIoU"])
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["configurations"][0]["metrics"]["mboundary_iou"] == config["metrics"]["mboundary_iou"]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert float(rows[0]["val_mBoundaryIoU"]) == pytest.approx(summary["val/mBoundaryIoU"])
    for name, value in summary["val/BoundaryIoU"].items():
        cell = rows[0][f"BoundaryIoU/{name}"]
        assert cell == "" if value is None else float(cell) == pytest.approx(value)
    md = (out / "comparison.md").read_text()
    assert "## Per-class boundary IoU" in md and "## Every metric" in md and "mean boundary IoU" in md


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "poc59.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_one_monitor_setting_picks_the_best_epoch_for_checkpoint_summary_and_log(tmp_path, capsys, monkeypatch):
    """An unknown monitor is refused (exit 2, nothing written) with advice that, pasted, trains; the run's
    best.ckpt, summary.json and epoch lines then all follow that metric. The refusals are answered in this
    process (tests/in_process.py: they come before Hydra); the pasted advice trains in a real one."""
    from in_process import command

    common = [*SMALL, "data.synthetic.n=6", "trainer.max_epochs=3", "trainer.limit_train_batches=2", "threads=1"]
    refused = command("train", [*common, "monitor=val/nope", f"run_dir={tmp_path / 'refused'}"], capsys, monkeypatch)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()
    advice = re.findall(r"monitor=val/\S+?(?=[,\s]|$)", refused.stderr.split("monitor=val/nope", 1)[1])
    assert "monitor=val/fwIoU" in advice, refused.stderr[-2000:]
    mismatch = command(
        "train",
        [*common, "callbacks.model_checkpoint.monitor=val/fwIoU", f"run_dir={tmp_path / 'x'}"],
        capsys,
        monkeypatch,
    )
    assert mismatch.returncode == 2 and "pass monitor=val/fwIoU" in mismatch.stderr, mismatch.stderr[-2000:]

    run = tmp_path / "run"
    done = _train(*common, "monitor=val/fwIoU", f"run_dir={run}", cwd=tmp_path)  # the advice, pasted
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor"] == "val/fwIoU"
    history = summary["history"]
    best = max(history, key=lambda h: h["fwIoU"])  # max keeps the earliest of equal values, as the checkpoint does
    assert summary["best_epoch"] == best["epoch"] and summary["val/fwIoU"] == best["fwIoU"]
    assert summary["val/mIoU"] == best["mIoU"]  # every metric of that epoch, not the best of each
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["card"]["metrics"]["validation"]["epoch"] == best["epoch"]  # best.ckpt: that epoch
    assert f"Best val/fwIoU {100 * best['fwIoU']:.2f} % at epoch {best['epoch']}" in done.stderr
    assert re.search(r"Epoch 2 \(3 of 3\): .* val fwIoU [\d.]+ % \(best ", done.stderr), done.stderr[-3000:]


def _variant(trained_run: Path, folder: Path, lr: float, figures: dict) -> Path:
    """A copy of the shared run as another configuration (its optimizer.lr) whose summary.json holds `figures`."""
    run = Path(shutil.copytree(trained_run, folder))
    config = (run / "config.yaml").read_text()
    assert "lr: " in config
    (run / "config.yaml").write_text(re.sub(r"(?m)^(\s+lr:) .*$", rf"\1 {lr}", config, count=1))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, **figures}))
    return run


def test_compare_ranks_by_the_runs_monitor_or_its_own_and_refuses_a_mixture(trained_run, tmp_path, capsys, monkeypatch):
    """compare ranks configurations by the metric their runs picked their best epoch by (`monitor`), or by its
    own monitor=; runs that picked theirs by different metrics are refused, and the advice, pasted, compares."""
    from in_process import command

    # a leads in mIoU, b in fwIoU: the ranking says which one ranked
    a = _variant(trained_run, tmp_path / "a", 0.01, {"val/mIoU": 0.6, "val/fwIoU": 0.7})
    b = _variant(trained_run, tmp_path / "b", 0.02, {"val/mIoU": 0.5, "val/fwIoU": 0.8})
    by_miou = compare(runs=[a, b], out=tmp_path / "c1", evaluate=False)
    assert by_miou["monitor"] == "val/mIoU" and [c["runs"] for c in by_miou["configurations"]] == [[str(a)], [str(b)]]
    assert (
        by_miou["configurations"][0]["score"] == 0.6
        and "ranked by val/fwIoU" not in (tmp_path / "c1" / "comparison.md").read_text()
    )

    by_fw = compare(runs=[a, b], out=tmp_path / "c2", evaluate=False, monitor="val/fwIoU")
    assert [c["runs"] for c in by_fw["configurations"]] == [[str(b)], [str(a)]]
    assert by_fw["conventions"]["score"].startswith("val/fwIoU, the metric the configurations are ranked by (compare's")
    md = (tmp_path / "c2" / "comparison.md").read_text()
    assert "| ranked by val/fwIoU, % | val/fwIoU interval, % |" in md and "| 80.00 |" in md
    rows = list(csv.DictReader((tmp_path / "c2" / "comparison.csv").open()))
    assert [(r["ranked_by"], float(r["score"]), r["rank"]) for r in rows] == [
        ("val/fwIoU", 0.8, "1"),
        ("val/fwIoU", 0.7, "2"),
    ]
    assert float(rows[0]["val_mIoU_mean"]) == 0.5  # the mIoU columns stay what they say

    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "monitor": "val/fwIoU"}))
    refused = command("compare", [f"runs=[{a},{b}]", f"out={tmp_path / 'c3'}", "evaluate=false"], capsys, monkeypatch)
    assert refused.returncode == 2 and "val/mIoU: " in refused.stderr and "val/fwIoU: " in refused.stderr, (
        refused.stderr
    )
    assert not (tmp_path / "c3").exists()
    advice = re.search(r"monitor=\S+(?= \()", refused.stderr).group()
    pasted = command(
        "compare", [f"runs=[{a},{b}]", f"out={tmp_path / 'c3'}", "evaluate=false", advice], capsys, monkeypatch
    )
    assert pasted.returncode == 0, pasted.stderr
    bad = command("compare", [f"runs=[{a}]", "monitor=val/nope", f"out={tmp_path / 'c4'}"], capsys, monkeypatch)
    assert bad.returncode == 2 and "monitor=val/fwIoU" in bad.stderr and not (tmp_path / "c4").exists()

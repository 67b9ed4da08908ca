"""logger=wandb offline (no network): the run files wandb writes, read back, hold the config, every epoch's
metrics, the best figures and the run's records; a resume and evaluate write to the same W&B run id."""

from __future__ import annotations

import json

import pytest

from helpers import SMALL, make_cfg
from poc59.evaluation.run import evaluate_run
from poc59.training.run import train
from wandb_offline import offline_runs, read_run


@pytest.mark.slow  # two trainings and an evaluation: 67 s at a load of 8-10
def test_an_offline_run_holds_what_mlflow_gets_and_a_resume_keeps_its_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    tracked = (
        *SMALL,
        "trainer.num_sanity_val_steps=0",  # W&B records the fitted epochs; a sanity pass adds only time
        "callbacks.val_overlays=null",
        "logger=wandb",
        f"paths.output_dir={tmp_path / 'outputs'}",
    )
    summary = train(make_cfg(tmp_path, *tracked, "trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert record["mode"] == "offline" and record["dir"] == str(run_dir)
    (first,) = offline_runs(run_dir)
    run = read_run(first)
    assert run["id"] == record["id"]
    assert run["config"]["data.image_size"] == "64" and run["config"]["trainer.max_epochs"] == "2"
    assert (
        run["config"]["poc59_tags"]["poc59.split_fingerprint"]
        == json.loads((run_dir / "split.json").read_text())["fingerprint"]
    )
    epochs = [h["val/mIoU"] for h in run["history"] if "val/mIoU" in h]
    assert epochs == pytest.approx([h["mIoU"] for h in summary["history"]])
    assert any("val/IoU/Burn marks" in h for h in run["history"])  # per-class IoU by class name
    assert run["summary"]["best/val/mIoU"] == pytest.approx(summary["val/mIoU"])
    assert {"run/summary.json", "run/split.json", "run/class_weights.json", "run/model_card.json"} <= set(run["files"])
    kept = next(first.parent.glob("files/run/summary.json"))
    assert json.loads(kept.read_text()) == json.loads((run_dir / "summary.json").read_text())  # a copy, not a link

    train(make_cfg(tmp_path, *tracked, "trainer.max_epochs=3"))  # resumes: a second offline folder, the same id
    second = [f for f in offline_runs(run_dir) if f != first]
    assert len(second) == 1 and read_run(second[0])["id"] == record["id"]
    assert len([h for h in read_run(second[0])["history"] if "val/mIoU" in h]) == 1  # epoch 2 only

    metrics = evaluate_run(run_dir, resamples=20, pictures=False)
    added = [f for f in offline_runs(run_dir) if f not in (first, *second)]
    assert len(added) == 1
    back = read_run(added[0])
    assert back["id"] == record["id"] and back["summary"]["eval/val/miou"] == pytest.approx(metrics["miou"])
    assert "evaluation/val/metrics.json" in back["files"]

"""One best checkpoint per run, and every command loads the one the run recorded (issue 29 item 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from helpers import TRAINED_RUN, make_cfg
from poc59.artifacts.ensemble import members_of
from poc59.artifacts.export import run_metrics
from poc59.artifacts.load import load_model, locate_checkpoint
from poc59.artifacts.trained import best_checkpoint
from poc59.evaluation.run import evaluate_run
from poc59.training.run import train


def _epoch(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]


@pytest.mark.slow
def test_a_copied_run_recovered_from_best_keeps_one_best_checkpoint_that_every_command_loads(trained_run, tmp_path):
    """The README's recovery from a damaged last.ckpt (ckpt_path=<run>/checkpoints/best.ckpt) in a copy of a run:
    the copy's checkpoints recorded the original's folder. Lightning then wrote best-v1.ckpt at the first epoch
    (better or not) beside best.ckpt; summary.json named one, evaluate and export loaded the other. The
    original: the session's 2-epoch trained_run."""
    original, copy = trained_run, tmp_path / "copy"
    shutil.copytree(original, copy)
    before = {p.name: p.read_bytes() for p in (original / "checkpoints").iterdir()}
    (copy / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    cfg = make_cfg(tmp_path, *TRAINED_RUN, "trainer.max_epochs=4", f"ckpt_path={copy / 'checkpoints' / 'best.ckpt'}")
    with open_dict(cfg):
        cfg.paths.run_dir = str(copy)
    summary = train(cfg)

    best = copy / "checkpoints" / "best.ckpt"
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert summary["checkpoint"]["best"] == str(best) and best_checkpoint(copy) == best
    assert _epoch(best) == summary["best_epoch"]  # the file holds the epoch the summary calls best
    assert locate_checkpoint(copy, None)[0] == best and members_of(run_dirs=[copy]) == [best]
    metrics = evaluate_run(run_dir=copy, pictures=False, resamples=50, device="cpu")
    assert metrics["checkpoint"] == str(best) and metrics["checkpoint_epoch"] == summary["best_epoch"]
    assert metrics["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4)
    assert run_metrics(load_model(best), copy)["training"]["best_epoch"] == summary["best_epoch"]  # export's card
    assert {p.name: p.read_bytes() for p in (original / "checkpoints").iterdir()} == before  # the original untouched


def test_every_command_resolves_the_best_checkpoint_the_run_recorded(tmp_path):
    """A run trained before one best.ckpt per run: a resume wrote best-v1.ckpt (epoch 20) beside an older
    best.ckpt (epoch 18), and its summary.json recorded best-v1.ckpt (in the folder it trained in)."""
    run = tmp_path / "moved" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    for name in ("best.ckpt", "best-v1.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(name.encode())
    recorded = {"best": "/elsewhere/run/checkpoints/best-v1.ckpt", "last": "/elsewhere/run/checkpoints/last.ckpt"}
    (run / "summary.json").write_text(json.dumps({"checkpoint": recorded, "best_epoch": 20}))

    assert best_checkpoint(run) == run / "checkpoints" / "best-v1.ckpt"
    assert locate_checkpoint(run, None)[0] == (run / "checkpoints" / "best-v1.ckpt").resolve()  # evaluate, export
    assert members_of(run_dirs=[run]) == [(run / "checkpoints" / "best-v1.ckpt").resolve()]  # ensembles, predict
    (run / "checkpoints" / "best-v1.ckpt").unlink()  # a later resume overwrote best.ckpt and removed it
    assert best_checkpoint(run) == run / "checkpoints" / "best.ckpt"
    (run / "summary.json").unlink()  # still training: no summary yet
    assert best_checkpoint(run) == run / "checkpoints" / "best.ckpt"

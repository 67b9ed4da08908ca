"""init_from=<ckpt>: a new run starts its network from another run's weights (fine-tuning, the correction
loop's round 1), unlike a resume; a missing file is refused before any data is touched."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TRAINED_RUN, make_cfg
from in_process import command
from poc59.training.run import train

# A learning rate so small that no float32 weight moves: the trained network's parameters are its start.
STILL = ("optimizer.lr=1e-30", "trainer.max_epochs=1", "trainer.limit_train_batches=1")


def _parameters(ckpt) -> dict[str, torch.Tensor]:
    """The network's learnt parameters (BatchNorm's running statistics move in training whatever the rate)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


@pytest.mark.slow  # two trainings: 34 s at a load of 8-10
def test_init_from_starts_the_network_from_the_checkpoints_weights_in_a_new_run(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.ckpt"
    started = make_cfg(tmp_path / "a", *TRAINED_RUN, *STILL, f"init_from={best}")
    train(started)
    run = tmp_path / "a" / "run"
    mine, theirs = _parameters(run / "checkpoints" / "last.ckpt"), _parameters(best)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    card = json.loads((run / "model_card.json").read_text())
    assert card["provenance"]["init_from"] == str(best.resolve())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 0  # a new run from epoch 0, not a resume

    train(make_cfg(tmp_path / "b", *TRAINED_RUN, *STILL))  # without it: the random start, not the checkpoint
    fresh = _parameters(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert not all(torch.equal(fresh[k], theirs[k]) for k in fresh)


def test_a_missing_init_from_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache"))
    argv = [*TRAINED_RUN, f"run_dir={tmp_path / 'run'}", f"init_from={tmp_path / 'no.ckpt'}"]
    result = command("train", argv, capsys, monkeypatch)
    assert result.returncode == 2, result.stderr
    assert f"init_from={tmp_path / 'no.ckpt'}: no such file" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()

"""Loading a trained model back from its checkpoint, with nothing else from the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from poc59.artifacts.load import load_model
from poc59.artifacts.trained import ModelLoadError, is_runs_best, load_checkpoint
from poc59.core.classes import ARTEFACT
from poc59.model.module import SegmentationModule


@pytest.fixture
def run(trained_run):
    """The session's shared run, only read here."""
    return trained_run


def test_checkpoint_rebuilds_the_trained_network(run, tmp_path):
    ckpt = run / "checkpoints" / "best.ckpt"
    model = load_model(ckpt)
    assert model.run_dir == run and model.classes.names == ARTEFACT.names
    assert model.geometry == {"policy": "resize", "image_size": 64, "max_side": None} and model.image_size == 64

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module = SegmentationModule.load_from_checkpoint(
        ckpt, net=model.segmenter.net, loss=torch.nn.Identity(), optimizer=None, map_location="cpu"
    )
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model.segmenter(images), module.eval()(images))
    for key, value in model.segmenter.net.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"segmenter.net.{key}"]), key

    # a copy outside its run folder is still self-contained
    alone = shutil.copy(ckpt, tmp_path / "model.ckpt")
    assert load_checkpoint(alone).run_dir is None


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.ckpt: cannot be read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ModelLoadError, match="not a poc59 training checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")


def test_the_runs_best_checkpoint_is_its_recorded_file_at_its_best_epoch(run, tmp_path):
    """The one test export's card and an ensemble's member record both use (is_runs_best)."""
    summary = json.loads((run / "summary.json").read_text())
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert is_runs_best(best, run, summary)
    assert not is_runs_best(best, run, {**summary, "best_epoch": summary["best_epoch"] + 1})  # another epoch's file
    assert not is_runs_best(best, None, summary)
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert not is_runs_best(last, run, summary)  # the same epoch, not the file the run records as its best

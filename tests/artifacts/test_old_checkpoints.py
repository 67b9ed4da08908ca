"""A checkpoint written before the model card (by commit 26ca46b's own code, run here) still resumes,
evaluates, predicts and exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch

from helpers import CRACKFOREST, make_cfg
from poc59.artifacts.export import export_model
from poc59.artifacts.load import load_model
from poc59.core.classes import ARTEFACT
from poc59.evaluation.run import evaluate_run
from poc59.predict import main as predict_main
from poc59.training.run import train

REPO = Path(__file__).resolve().parents[2]
OLD = "26ca46b"  # the last commit before the model card and the Segmenter inside the LightningModule
RUN = (
    "encoder=tiny",
    "data.synthetic.n=8",
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A 1-epoch run trained by commit 26ca46b's code (from this checkout's history) in a fresh process."""
    tmp = tmp_path_factory.mktemp("old")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "src", "conf"], capture_output=True, timeout=60)
    assert archive.returncode == 0, (
        f"this test needs the checkout's git history (commit {OLD}): {archive.stderr.decode()}"
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp / "code", filter="data")
    run = tmp / "run"
    env = {**os.environ, "PYTHONPATH": str(tmp / "code" / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "poc59.train", *RUN, "trainer.max_epochs=1", f"run_dir={run}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "card" not in ckpt["hyper_parameters"] and any(
        k.startswith("net.") for k in ckpt["state_dict"]
    )  # the old format
    return run


@pytest.mark.slow  # old_run: the old code trains in a fresh process, about 100 s on 2 cores
def test_an_old_checkpoint_loads_with_its_card_rebuilt(old_run):
    model = load_model(old_run / "checkpoints" / "best.ckpt")
    assert model.classes.names == ARTEFACT.names and model.geometry == {
        "policy": "resize",
        "image_size": 64,
        "max_side": None,
    }
    assert model.card.input_multiple == 32 and model.card.family == "CNN"  # from the run's config.yaml
    assert model.run_dir == old_run


@pytest.mark.slow  # old_run: the old code trains in a fresh process, about 100 s on 2 cores
def test_an_old_checkpoint_evaluates_predicts_and_exports(old_run, tmp_path):
    metrics = evaluate_run(run_dir=old_run, pictures=False, resamples=50, out=tmp_path / "eval")
    summary = json.loads((old_run / "summary.json").read_text())
    assert metrics["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4)  # the run's own validation, reproduced

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(CRACKFOREST / "images" / "001.jpg", scans)
    assert (
        predict_main([f"ckpt={old_run / 'checkpoints' / 'best.ckpt'}", f"input={scans}", f"output={tmp_path / 'pred'}"])
        == 0
    )
    assert (tmp_path / "pred" / "001_labels.png").exists()

    card = export_model(ckpt=old_run / "checkpoints" / "best.ckpt", out=tmp_path / "export", format="torchscript").card
    assert card["parity"]["torchscript"]["passed"] and card["input"]["multiple_of"] == 32


@pytest.mark.slow  # old_run: the old code trains in a fresh process, about 100 s on 2 cores
def test_an_old_run_resumes(old_run):
    """Last: it continues the old run in its folder (the runs of the tests above used the old checkpoints)."""
    run = old_run
    summary = train(make_cfg(old_run.parent, *RUN, "trainer.max_epochs=2"))
    assert summary["epochs_run"] == 2 and [h["epoch"] for h in summary["history"]] == [0, 1]  # epoch 0 from the old run
    card = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"][
        "card"
    ]
    assert card["network"]["name"] == "tu-mobilenetv3_small_050"  # written in today's format from now on

"""evaluate and predict on CUDA, from a run trained on the GPU (issue 12, item 11)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poc59.training.run import train

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest.py says why)


@pytest.fixture(scope="module")
def trained_run(gpu_cfg, set_128, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gpu-run") / "run"
    train(
        gpu_cfg(
            run,
            "encoder=tiny",
            f"data.root={set_128}",
            "data.image_size=128",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
        )
    )
    assert (run / "checkpoints" / "best.ckpt").exists()
    return run


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=240, check=False
    )


def test_evaluate_on_cuda(trained_run, tmp_path):
    proc = _command(
        "poc59.evaluate",
        f"run_dir={trained_run}",
        "device=cuda",
        "pictures=false",
        "bootstrap.resamples=50",
        f"out={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["speed"]["device"].startswith("cuda") and 0 <= metrics["miou"] <= 1


def test_predict_on_cuda(trained_run, set_128, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((set_128 / "images").iterdir())[:2]:
        shutil.copy(p, scans / p.name)
    proc = _command(
        "poc59.predict",
        f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}",
        f"input={scans}",
        f"output={tmp_path / 'maps'}",
        "device=cuda",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for p in scans.iterdir():
        assert (tmp_path / "maps" / f"{p.stem}_labels.png").exists()
    assert (tmp_path / "maps" / "statistics.json").exists()

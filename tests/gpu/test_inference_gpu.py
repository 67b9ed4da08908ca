"""evaluate and predict on CUDA give the CPU's results for the same checkpoint, within the tolerances of
tests/parity.py (what bf16 arithmetic changes; a wrong autocast path changes far more). The comparisons are
checked without a GPU in tests/test_parity.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity import (
    LABEL_AGREEMENT,
    MIOU_TOLERANCE,
    PARITY_RUN,
    confusion_agreement,
    label_agreement,
    metrics,
    miou_difference,
)
from poc59.training.run import train

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest.py says why)


@pytest.fixture(scope="module")
def trained_run(gpu_cfg, set_128, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gpu-run") / "run"
    train(gpu_cfg(run, *PARITY_RUN, f"data.root={set_128}"))  # the run tests/test_parity.py trains on the CPU
    assert (run / "checkpoints" / "best.ckpt").exists()
    return run


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=240, check=False
    )


def test_evaluate_on_cuda_scores_as_the_cpu_does(trained_run, tmp_path):
    """The run's best.ckpt scored in its training precision (bf16-mixed or 16-mixed) on CUDA and in float32
    on the CPU: mIoU and each image's confusion matrix agree within parity.py's tolerances."""
    for device in ("cuda", "cpu"):
        proc = _command(
            "poc59.evaluate",
            f"run_dir={trained_run}",
            f"device={device}",
            "pictures=false",
            "bootstrap.resamples=50",
            f"out={tmp_path / device}",
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    cuda, cpu = metrics(tmp_path / "cuda"), metrics(tmp_path / "cpu")
    assert cuda["speed"]["device"].startswith("cuda") and cpu["speed"]["device"] == "cpu"
    miou = miou_difference(tmp_path / "cuda", tmp_path / "cpu")
    assert miou <= MIOU_TOLERANCE, f"mIoU {cuda['miou']:.4f} on CUDA, {cpu['miou']:.4f} on the CPU"
    agreement = confusion_agreement(tmp_path / "cuda", tmp_path / "cpu")
    assert agreement >= LABEL_AGREEMENT, f"at most {agreement:.2%} of the labelled pixels predicted alike"


@pytest.mark.parametrize("precision", ["auto", "32"])
def test_predict_on_cuda_labels_as_the_cpu_does(trained_run, set_128, tmp_path, precision):
    """predict's label maps on CUDA (autocast, or float32 with TF32 convolutions) and on the CPU: at least
    LABEL_AGREEMENT of the pixels have the same class."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((set_128 / "images").iterdir())[:4]:
        shutil.copy(p, scans / p.name)
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    for device, given in (("cuda", precision), ("cpu", "32")):
        proc = _command(
            "poc59.predict",
            f"ckpt={ckpt}",
            f"input={scans}",
            f"output={tmp_path / device}",
            f"device={device}",
            f"precision={given}",
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert (tmp_path / device / "statistics.json").exists()
    agreement = label_agreement(tmp_path / "cuda", tmp_path / "cpu")
    assert agreement >= LABEL_AGREEMENT, f"{agreement:.4%} of the pixels have the same class on CUDA and the CPU"

"""The comparisons tests/gpu makes between CUDA and the CPU (tests/parity.py), checked without a GPU: two CPU
runs of one checkpoint agree exactly, bf16 autocast emulated on the CPU (the coarsest arithmetic a GPU run
uses) stays within the tolerances, and a result that is not the same fails them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import poc59.evaluation.run as evaluation
import poc59.inference.tiling as tiling
from helpers import make_cfg
from parity import (
    LABEL_AGREEMENT,
    LABELS_SUFFIX,
    MIOU_TOLERANCE,
    PARITY_RUN,
    PER_IMAGE,
    confusion_agreement,
    label_agreement,
    miou_difference,
    write_folder,
)
from poc59.evaluate import main as evaluate
from poc59.predict import main as predict
from poc59.training.run import train

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(the run tests/gpu trains, here on the CPU; a folder of 4 of its images to predict)."""
    tmp = tmp_path_factory.mktemp("parity")
    data = write_folder(tmp / "set128", 40, 128, seed=1)  # tests/gpu's set_128
    train(make_cfg(tmp, *PARITY_RUN, "data=artefact", f"data.root={data}", "trainer.enable_progress_bar=false"))
    scans = tmp / "scans"
    scans.mkdir()
    for p in sorted((data / "images").iterdir())[:4]:
        shutil.copy(p, scans / p.name)
    return tmp / "run", scans


def _score(run: tuple[Path, Path], out: Path) -> tuple[Path, Path]:
    """(predict's label maps, evaluate's output) of the run's best.ckpt on the CPU, as tests/gpu runs them."""
    run_dir, scans = run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    maps, scored = out / "maps", out / "evaluation"
    assert predict([f"ckpt={ckpt}", f"input={scans}", f"output={maps}", "device=cpu", "overlay=false"]) == 0
    assert (
        evaluate([f"run_dir={run_dir}", "device=cpu", "pictures=false", "bootstrap.resamples=20", f"out={scored}"]) == 0
    )
    return maps, scored


@pytest.fixture(scope="module")
def cpu(run, tmp_path_factory) -> tuple[Path, Path]:
    return _score(run, tmp_path_factory.mktemp("cpu"))


@pytest.mark.slow
def test_two_cpu_runs_of_one_checkpoint_agree_exactly(run, cpu, tmp_path):
    maps, scored = _score(run, tmp_path)
    assert label_agreement(maps, cpu[0]) == 1.0
    assert miou_difference(scored, cpu[1]) == 0.0
    assert confusion_agreement(scored, cpu[1]) == 1.0


@pytest.mark.slow
def test_emulated_bf16_agrees_within_the_tolerances(run, cpu, tmp_path, monkeypatch):
    """predict and evaluate under bf16 autocast on the CPU (CUDA's default on GPUs with native bf16; bf16 has
    the fewest significant bits of any precision a GPU run uses): the flips it makes stay within the bounds."""
    monkeypatch.setattr(tiling, "device_autocast", lambda device, dtype: torch.autocast("cpu", dtype=torch.bfloat16))
    monkeypatch.setattr(
        evaluation, "precision_for", lambda device, trained=None: ("bf16-mixed", torch.autocast("cpu", torch.bfloat16))
    )
    maps, scored = _score(run, tmp_path)
    agreement, miou, confusion = (
        label_agreement(maps, cpu[0]),
        miou_difference(scored, cpu[1]),
        confusion_agreement(scored, cpu[1]),
    )
    log.warning("bf16 vs float32 on the CPU: labels %.4f, mIoU %.4f apart, confusion %.4f", agreement, miou, confusion)
    assert agreement < 1.0  # bf16 did run: some near-ties flipped
    assert agreement >= LABEL_AGREEMENT and confusion >= LABEL_AGREEMENT and miou <= MIOU_TOLERANCE


@pytest.mark.slow
def test_a_result_that_is_not_the_same_fails_the_comparisons(cpu, tmp_path):
    maps, scored = cpu
    shifted = tmp_path / "shifted"  # tiles stitched 8 px out of place
    shifted.mkdir()
    for p in maps.glob(f"*{LABELS_SUFFIX}"):
        Image.fromarray(np.roll(np.asarray(Image.open(p)), 8, axis=1)).save(shifted / p.name)
    assert label_agreement(shifted, maps) < LABEL_AGREEMENT

    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((scored / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps({**record, "miou": record["miou"] + 2 * MIOU_TOLERANCE}))
    assert miou_difference(other, scored) > MIOU_TOLERANCE

    with np.load(scored / PER_IMAGE) as f:
        ids, confusion = f["ids"], f["confusion"].copy()
    need = int(confusion.sum() * 2 * (1 - LABEL_AGREEMENT))  # twice the changed labels the tolerance allows
    rows = confusion.reshape(-1, confusion.shape[-1])  # (image, target) rows of predicted classes: a view
    for r in np.argsort(-rows.sum(axis=1)):
        p = int(np.argmax(rows[r]))
        taken = min(need, int(rows[r, p]))
        rows[r, p] -= taken
        rows[r, (p + 1) % rows.shape[1]] += taken  # labelled pixels predicted as another class
        need -= taken
        if need <= 0:
            break
    np.savez_compressed(other / PER_IMAGE, ids=ids, confusion=confusion)
    assert confusion_agreement(other, scored) < LABEL_AGREEMENT

    fewer = tmp_path / "fewer"
    fewer.mkdir()
    shutil.copy(next(maps.glob(f"*{LABELS_SUFFIX}")), fewer)
    with pytest.raises(ValueError, match="label maps of other images"):
        label_agreement(fewer, maps)

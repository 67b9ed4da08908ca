"""Two-process DDP on CPU (gloo): the same numbers as one process, each sample seen once."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_folder

SCRIPT = Path(__file__).with_name("ddp_check.py")


@pytest.mark.slow
def test_two_process_ddp_shards_and_validates_like_one(tmp_path):
    data = make_folder(tmp_path / "data", n=9, copies=1, size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    for devices in (1, 2):
        run = subprocess.run(
            [sys.executable, str(SCRIPT), str(data), str(out), str(devices)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"shards-2-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for side in ("train", "val"):
        a, b = set(ranks[0][side]), set(ranks[1][side])
        assert a and b and not a & b  # disjoint shards
    assert len(ranks[0]["train"]) == len(ranks[1]["train"])  # equal length for training
    single = json.loads((out / "shards-1-0.json").read_text())
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == sorted(single["val"])  # validation covers every sample once
    one, two = (json.loads((out / f"confmat-{d}.json").read_text()) for d in (1, 2))
    assert sum(map(sum, one)) > 0
    assert two == one  # the same confusion matrix from 1 and from 2 processes


TRAIN_SCRIPT = Path(__file__).with_name("ddp_train_check.py")
DDP = (
    "encoder=tiny",
    "data=artefact",
    "data.image_size=32",
    "data.batch_size=2",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "+trainer.strategy=ddp",
    "trainer.enable_progress_bar=false",
)


def _train_ddp(out: Path, *overrides: str) -> tuple[dict, list[dict]]:
    out.mkdir(parents=True)
    run = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), str(out), *DDP, *overrides], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [json.loads((out / f"after-fit-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["after_fit"] for r in ranks] == [[], []]  # no collective once fit has returned, on any rank
    return json.loads((out / "run" / "summary.json").read_text()), ranks


@pytest.mark.slow
def test_two_process_training_writes_its_summary_with_no_collective_after_fit(tmp_path):
    """NCCL refuses CPU tensors: the summary's all-Clean baseline must not sync (the guard fails it as NCCL would)."""
    data = make_folder(tmp_path / "data", n=8, copies=1, size=(32, 32))
    summary, _ = _train_ddp(tmp_path / "out", f"data.root={data}", "data.val_fraction=0.25")
    assert summary["epochs_run"] == 2 and summary["val/mIoU"] is not None
    assert 0 < summary["baseline_val/mIoU"] <= 1 and summary["train_images_per_s"] > 0
    assert [h["epoch"] for h in summary["history"]] == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("originals, val_fraction", [(6, 0.5), (4, 0.25)])  # 3 and 1 validation images
def test_fewer_validation_images_than_ranks_do_not_hang(tmp_path, originals, val_fraction):
    """2 ranks, 3 (or 1) validation images: one rank's shard is short (or empty) and must still reach the
    epoch-end sum of the confusion matrix; its padding counts nowhere."""
    data = make_folder(tmp_path / "data", n=originals, copies=1, size=(32, 32))  # copies train only
    summary, ranks = _train_ddp(tmp_path / "out", f"data.root={data}", f"data.val_fraction={val_fraction}")
    split = json.loads((tmp_path / "out" / "run" / "split.json").read_text())
    assert len(split["val"]) == round(originals * val_fraction)
    assert summary["val/mIoU"] is not None and len(summary["history"]) == 2
    # padding (an all-ignore mask) adds no pixel: the matrix holds exactly the validation images' labelled pixels
    masks = [np.asarray(Image.open(data / "annotations" / f"{i}.png")) for i in split["val"]]
    labelled = sum(int((m != 255).sum()) for m in masks)
    assert [r["val_pixels"] for r in ranks] == [[labelled, labelled]] * 2

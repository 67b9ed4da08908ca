"""Two-process DDP on CPU (gloo): the same numbers as one process, each sample seen once."""

import json
import runpy
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
    # the one-process reference runs in this process (it saves the network both runs validate); the two ranks
    # run as DDP does, Lightning starting the script again for rank 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(SCRIPT), str(data), str(out), "1"])
        runpy.run_path(str(SCRIPT), run_name="__main__")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(out), "2"], capture_output=True, text=True, timeout=600
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


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """ddp_run(originals, val_fraction) -> (data folder, output folder, summary, ranks' records): a two-process
    training on `originals` images, trained once for the tests of this module that read it."""
    done: dict[tuple[int, float], tuple[Path, Path, dict, list[dict]]] = {}

    def trained(originals: int, val_fraction: float) -> tuple[Path, Path, dict, list[dict]]:
        if (originals, val_fraction) not in done:
            tmp = tmp_path_factory.mktemp("ddp")
            data = make_folder(tmp / "data", n=originals, copies=1, size=(32, 32))  # copies train only
            summary, ranks = _train_ddp(tmp / "out", f"data.root={data}", f"data.val_fraction={val_fraction}")
            done[originals, val_fraction] = data, tmp / "out", summary, ranks
        return done[originals, val_fraction]

    return trained


@pytest.mark.slow  # a two-process training, shared with the 3-image case below: 34 s at a load of 5-8
def test_two_process_training_writes_its_summary_with_no_collective_after_fit(ddp_run):
    """NCCL refuses CPU tensors: the summary's all-Clean baseline must not sync (the guard fails it as NCCL would)."""
    _, _, summary, _ = ddp_run(8, 0.375)  # 10 training images: two steps a rank each epoch, so throughput is timed
    assert summary["epochs_run"] == 2 and summary["val/mIoU"] is not None
    assert 0 < summary["baseline_val/mIoU"] <= 1 and summary["train_images_per_s"] > 0
    assert [h["epoch"] for h in summary["history"]] == [0, 1]


@pytest.mark.slow  # a two-process training each (the 3-image one shared with the test above): 28 s at a load of 5-8
@pytest.mark.parametrize("originals, val_fraction", [(8, 0.375), (4, 0.25)])  # 3 and 1 validation images
def test_fewer_validation_images_than_ranks_do_not_hang(ddp_run, originals, val_fraction):
    """2 ranks, 3 (or 1) validation images: one rank's shard is short (or empty) and must still reach the
    epoch-end sum of the confusion matrix; its padding counts nowhere."""
    data, out, summary, ranks = ddp_run(originals, val_fraction)
    split = json.loads((out / "run" / "split.json").read_text())
    assert len(split["val"]) == round(originals * val_fraction)
    assert summary["val/mIoU"] is not None and len(summary["history"]) == 2
    # padding (an all-ignore mask) adds no pixel: the matrix holds exactly the validation images' labelled pixels
    masks = [np.asarray(Image.open(data / "annotations" / f"{i}.png")) for i in split["val"]]
    labelled = sum(int((m != 255).sum()) for m in masks)
    assert [r["val_pixels"] for r in ranks] == [[labelled, labelled]] * 2

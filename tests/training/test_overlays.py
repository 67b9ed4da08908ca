"""Validation overlays reach TensorBoard during a real (tiny) training run, the same images every epoch."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import SMALL, make_cfg
from poc59.core.classes import ARTEFACT
from poc59.training.run import train


def _events(run) -> EventAccumulator:
    (event_file,) = (run / "tensorboard").glob("events.*")
    acc = EventAccumulator(str(event_file), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _is_blend(left: np.ndarray, panel: np.ndarray) -> np.ndarray:
    """Per pixel: the panel is the image, or the image half-blended with one palette colour."""
    ok = np.all(panel == left, axis=-1)
    for rgb in ARTEFACT.rgb():
        blend = np.rint(0.5 * left.astype(np.float32) + 0.5 * np.array(rgb, np.float32)).astype(np.uint8)
        ok |= np.all(panel == blend, axis=-1)
    return ok


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlays")
    train(make_cfg(tmp, *SMALL, "trainer.max_epochs=2", "trainer.limit_train_batches=1", "callbacks.val_overlays.k=2"))
    return _events(tmp / "run")


@pytest.mark.slow  # `events` trains a run: 20 s at a load of 8-10
def test_k_overlays_per_validation_epoch_not_the_sanity_check(events):
    tags = events.Tags()["images"]
    assert sorted(tags) == ["val_overlay/0", "val_overlay/1"]
    for tag in tags:
        assert len(events.Images(tag)) == 2  # two epochs; the sanity check logs nothing
    assert any(t.startswith("val_overlay/legend") for t in events.Tags()["tensors"])


@pytest.mark.slow  # `events` trains a run: 20 s at a load of 8-10
def test_overlays_show_image_truth_and_prediction_in_palette_colours(events):
    for tag in ("val_overlay/0", "val_overlay/1"):
        first, second = (
            np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")) for e in events.Images(tag)
        )
        assert first.shape[1:] == (3 * 64, 3) and first.shape[0] > 16 + 64  # names above, the legend below
        body = first[16 : 16 + 64]
        left, truth, pred = body[:, :64], body[:, 64:128], body[:, 128:]
        assert np.array_equal(second[16 : 16 + 64, :64], left)  # the same fixed validation image every epoch
        assert _is_blend(left, truth).all() and _is_blend(left, pred).all()
        assert not np.array_equal(truth, left)  # the synthetic images carry damage: the truth overlay shows it


@pytest.mark.slow  # a training: 15 s at a load of 8-10
def test_k_null_logs_no_overlays(tmp_path):
    train(
        make_cfg(
            tmp_path,
            *SMALL,
            "data.image_size=32",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.num_sanity_val_steps=0",
            "callbacks.val_overlays.k=null",
        )
    )
    assert _events(tmp_path / "run").Tags()["images"] == []

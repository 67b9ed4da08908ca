"""The loss contract (poc59.training.loss): any torch.nn.Module loss trains, with the data's class weights only
where its constructor takes them; a loss that cannot work is refused before any data is read."""

from __future__ import annotations

import json
import logging

import pytest

from helpers import SMALL, make_cfg
from in_process import command
from poc59.core.config import SettingError
from poc59.training.run import train

ONE_STEP = (
    *SMALL,
    "data.synthetic.n=6",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.val_overlays=null",
    "threads=1",
)
LOVASZ = "segmentation_models_pytorch.losses.LovaszLoss"


class Preloaded(AssertionError):
    """The data were read: the refusal should have come before."""


@pytest.fixture
def no_preload(monkeypatch):
    """The preload (the first read of the images) fails the test if anything calls it."""

    def preload(*args, **kwargs):
        raise Preloaded("the data were preloaded before the loss was checked")

    monkeypatch.setattr("poc59.data.datamodule.preload", preload)


@pytest.mark.parametrize(
    "loss",
    [
        [f"loss._target_={LOVASZ}", "+loss.mode=multiclass", "+loss.ignore_index=255"],
        ["loss._target_=torch.nn.CrossEntropyLoss", "+loss.ignore_index=255"],
    ],
    ids=["smp-lovasz", "torch-cross-entropy"],
)
@pytest.mark.slow  # a training each: 14-16 s at a load of 8-10
def test_a_third_party_loss_trains_as_given_and_the_run_says_no_class_weights(tmp_path, caplog, loss):
    caplog.set_level(logging.INFO, logger="poc59")
    summary = train(make_cfg(tmp_path, *ONE_STEP, "loss=ce", *loss))
    target = loss[0].split("=", 1)[1]
    said = json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]["loss"]
    assert said == summary["provenance"]["loss"]
    assert said["class"] == target and said["class_weights_applied"] is False
    assert said["arguments"]["ignore_index"] == 255
    assert f"Loss {target} takes no class_weights" in caplog.text
    assert summary["epochs_run"] == 1 and summary["history"][0]["epoch"] == 0


@pytest.mark.slow  # a training: 13 s at a load of 8-10
def test_poc59s_loss_gets_the_class_weights_and_says_so(tmp_path):
    summary = train(make_cfg(tmp_path, *ONE_STEP, "loss=ce"))
    said = summary["provenance"]["loss"]
    assert said["class_weights_applied"] is True
    assert said["class_weights"] == pytest.approx(summary["provenance"]["class_weights"]["weights"])


@pytest.mark.parametrize(
    "loss, says",
    [
        (
            [f"loss._target_={LOVASZ}", "+loss.mode=multiclass", "+loss.ignor_index=255"],
            "loss.ignor_index: segmentation_models_pytorch.losses.LovaszLoss takes no argument 'ignor_index' (it "
            "takes: mode, per_image, ignore_index, from_logits); did you mean loss.ignore_index?",
        ),
        (["loss._target_=pathlib.Path"], "loss._target_=pathlib.Path: the class Path, not a torch.nn.Module class"),
        (
            ["loss._target_=torch.nn.functional.cross_entropy"],
            "loss._target_=torch.nn.functional.cross_entropy: a function, not a torch.nn.Module class",
        ),
        (
            ["loss._target_=torch.nn.CrossEntropyLoss"],
            "fails: IndexError: Target 255 is out of bounds. Pass +loss.ignore_index=255",
        ),
        ([f"loss._target_={LOVASZ}", "+loss.mode=multiclass"], "counts pixels labelled 255"),
        ([f"loss._target_={LOVASZ}", "+loss.mode=binary"], f"loss._target_={LOVASZ}: loss(logits"),
    ],
    ids=["misspelt-key", "not-a-module", "a-function", "ce-without-ignore", "lovasz-without-ignore", "binary-mode"],
)
def test_a_loss_that_cannot_work_is_refused_before_the_data(tmp_path, no_preload, loss, says):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path, *ONE_STEP, f"paths.cache_dir={cache}", "loss=ce", *loss)
    with pytest.raises(SettingError) as refused:
        train(cfg)
    assert says in str(refused.value)
    assert not cache.exists() and not (tmp_path / "run").exists()  # nothing generated, read or started


@pytest.mark.slow  # a training: 17 s at a load of 8-10
def test_the_custom_loss_preset_and_its_advice_work(tmp_path, capsys, monkeypatch):
    """loss=custom names no class: exit 2 with an example; a preset's key a new class does not take points to
    loss=custom; the example the messages give trains."""
    cache = tmp_path / "cache"
    common = [*ONE_STEP, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = command("train", [*common, "loss=custom"], capsys, monkeypatch)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "loss._target_ is not set" in out.stderr
    example = "loss=custom loss._target_=torch.nn.CrossEntropyLoss +loss.ignore_index=255"
    assert example in out.stderr
    given = [f"loss._target_={LOVASZ}", "+loss.mode=multiclass", "+loss.ignore_index=255"]
    out = command("train", [*common, *given], capsys, monkeypatch)  # dice_focal's keys stay
    assert out.returncode == 2 and "add loss=custom" in out.stderr, out.stderr[-2000:]
    assert not cache.exists() and not (tmp_path / "run").exists()
    summary = train(make_cfg(tmp_path, *ONE_STEP, *example.split()))
    assert summary["provenance"]["loss"]["class"] == "torch.nn.CrossEntropyLoss"

"""The config as one object tree: `model` builds the network from the `encoder` and `decoder` groups, `module`
the LightningModule; encoder presets set their recommended data.batch_size and optimizer.lr; a key that moved
is refused with the one that replaced it; and a run recorded before all this (tests/training/fixtures/
run_before_model_group: a 1-epoch run trained by commit adf97d0's code, `encoder=custom
encoder.name=tu-test_efficientnet encoder.weights=null +encoder.decoder_kwargs.decoder_channels=[16,8,8,8,8]
data.synthetic.n=6 data.synthetic.aug_copies=0 data.image_size=64 data.batch_size=4 trainer.max_epochs=1`)
still resumes, evaluates, predicts and exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from hydra.utils import instantiate

from helpers import CRACKFOREST, make_cfg
from in_process import command
from poc59.artifacts.export import export_model
from poc59.artifacts.load import load_model
from poc59.core.config import SettingError
from poc59.core.overrides import compose_train
from poc59.evaluation.run import evaluate_run
from poc59.model.module import SegmentationModule
from poc59.predict import main as predict_main
from poc59.training import resume
from poc59.training.preflight import check_arguments
from poc59.training.run import train

OLD_RUN = Path(__file__).parent / "fixtures" / "run_before_model_group"
# The old run's settings on today's command line (its decoder widths now under decoder.kwargs)
OLD_SETTINGS = (
    "encoder=custom",
    "encoder.name=tu-test_efficientnet",
    "encoder.weights=null",
    "+decoder.kwargs.decoder_channels=[16,8,8,8,8]",
    "data.synthetic.n=6",
    "data.synthetic.aug_copies=0",
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.val_overlays.k=null",
    "trainer.num_sanity_val_steps=0",
    "threads=1",
)


def test_model_builds_the_network_from_the_encoder_and_decoder_groups(tmp_path):
    cfg = make_cfg(tmp_path, "encoder=tiny", "decoder=fpn")
    net = instantiate(cfg.model, num_classes=5)
    assert isinstance(net, smp.FPN) and net.segmentation_head[0].out_channels == 5
    assert cfg.model.encoder.name == cfg.encoder.name == "tu-mobilenetv3_small_050"
    net = instantiate(make_cfg(tmp_path, "encoder=tiny").model, num_classes=3)  # tiny's own decoder: a slim U-Net
    assert isinstance(net, smp.Unet) and net.decoder.blocks[-1].conv2[0].out_channels == 8
    module = instantiate(cfg.module, _partial_=True, channels_last=None)(net, torch.nn.Identity(), None, card=CARD)
    assert isinstance(module, SegmentationModule) and module.compile_net is False


CARD = {
    "classes": {"names": ["a", "b", "c"], "ignore_index": 255},
    "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
}


@pytest.mark.parametrize(
    ("overrides", "encoder", "decoder", "batch", "lr"),
    [
        ([], "tu-convnext_tiny", "Unet", 96, 1e-3),  # the earlier system's settings at 384 px
        (["encoder=segformer_b3"], "mit_b3", "Unet", 32, 3.33e-4),
        (["encoder=maxvit_tiny"], "tu-maxvit_tiny_tf_384", "Unet", 48, 5e-4),
        (
            ["encoder=maxvit_tiny", "decoder=segformer", "optimizer.lr=1e-4"],
            "tu-maxvit_tiny_tf_384",
            "Segformer",
            48,
            1e-4,
        ),
        (["experiment=quickstart"], "tu-regnetx_004", "FPN", 8, 2e-2),
        (["experiment=quickstart", "decoder=unet"], "tu-regnetx_004", "Unet", 8, 2e-2),
    ],
)
def test_presets_set_batch_and_learning_rate_where_they_belong(tmp_path, overrides, encoder, decoder, batch, lr):
    cfg = make_cfg(tmp_path, *overrides)
    assert (cfg.encoder.name, cfg.decoder.name, cfg.data.batch_size) == (encoder, decoder, batch)
    assert cfg.optimizer.lr == pytest.approx(lr) and cfg.scheduler.max_lr == pytest.approx(lr)
    assert "lr" not in cfg.encoder and "batch_size" not in cfg.encoder and "decoder" not in cfg.encoder


def test_the_quickstart_network_is_the_one_it_was():
    """experiment=quickstart's FPN keeps a quarter of smp's widths (the README's measured recipe)."""
    cfg = compose_train(["experiment=quickstart"])
    assert dict(cfg.decoder.kwargs) == {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}


def test_a_misspelt_encoder_key_is_named_with_the_right_one(tmp_path):
    with pytest.raises(SettingError, match=r"encoder.nmae: .* did you mean encoder.name\?"):
        check_arguments(make_cfg(tmp_path, "encoder=tiny", "+encoder.nmae=x"))


@pytest.mark.parametrize(
    ("given", "advice"),
    [
        ("encoder.lr=1e-3", "optimizer.lr=1e-3"),
        ("encoder.batch_size=4", "data.batch_size=4"),
        ("encoder.decoder=FPN", "decoder=fpn"),
        ("encoder.decoder_kwargs=null", "decoder.kwargs=null"),
        ("+encoder.decoder_kwargs.decoder_channels=[16,8,8,8,8]", "decoder.kwargs.decoder_channels=[16,8,8,8,8]"),
        ("encoder.decoder_kwargs.decoder_channels=[16,8,8,8,8]", "decoder.kwargs.decoder_channels=[16,8,8,8,8]"),
        ("decoder=unet encoder.decoder_kwargs.decoder_channels=[8,8]", "+decoder.kwargs.decoder_channels=[8,8]"),
        ("model.compile=true", "module.compile=true"),
        ("model.channels_last=false", "module.channels_last=false"),
        ("+model.compile_options.mode=max-autotune", "+module.compile_options.mode=max-autotune"),
        ("run_name=segformer-a", "run_dir=outputs/runs/segformer-a"),
        ("paths.run_dir=/tmp/somewhere", "run_dir=/tmp/somewhere"),
    ],
)
def test_a_key_that_moved_is_refused_with_the_override_that_replaces_it(given, advice, capsys, monkeypatch):
    chosen, given = ["encoder=tiny", *given.split()[:-1]], given.split()[-1]
    answer = command("train", [*chosen, given], capsys, monkeypatch)
    assert answer.returncode == 2 and f"use {advice}" in answer.stderr and "Traceback" not in answer.stderr
    compose_train([*chosen, advice])  # the advice works when pasted: it composes


def _old_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


def test_a_run_recorded_before_the_model_group_may_resume(tmp_path):
    """Its config.yaml has encoder.decoder, encoder.lr, model.compile...: resume reads it in today's layout."""
    run = _old_run(tmp_path)
    assert "decoder_kwargs" in (run / "config.yaml").read_text()  # the old layout
    cfg = make_cfg(tmp_path, *OLD_SETTINGS, "trainer.max_epochs=2")
    assert resume.plan(cfg, run) == (run, str(run / "checkpoints" / "last.ckpt"))
    changed = make_cfg(tmp_path, *OLD_SETTINGS, "trainer.max_epochs=2", "decoder.kwargs.decoder_channels=[8,8,8,8,8]")
    with pytest.raises(resume.ResumeConfigError, match=r"decoder.kwargs.decoder_channels: \[16, 8, 8, 8, 8\] -> "):
        resume.plan(changed, run)  # still its own configuration that is checked


@pytest.mark.slow  # trains one epoch, evaluates, predicts and exports: about 40 s on 2 cores
def test_a_run_recorded_before_the_model_group_resumes_evaluates_predicts_and_exports(tmp_path):
    run = _old_run(tmp_path)
    old_best = Path(shutil.copy(run / "checkpoints" / "best.ckpt", tmp_path / "old_best.ckpt"))
    before = json.loads((run / "summary.json").read_text())

    summary = train(make_cfg(tmp_path, *OLD_SETTINGS, "trainer.max_epochs=2"))
    assert summary["epochs_run"] == 2 and [h["epoch"] for h in summary["history"]] == [0, 1]  # epoch 0: the old run's
    assert summary["history"][0] == before["history"][0] and summary["decoder"] == "Unet"

    model = load_model(old_best)
    assert model.card.network["decoder_kwargs"] == {"decoder_channels": [16, 8, 8, 8, 8]}
    metrics = evaluate_run(run_dir=run, ckpt=old_best, pictures=False, resamples=20, out=tmp_path / "eval")
    assert metrics["miou"] == pytest.approx(before["val/mIoU"], abs=1e-4)  # its own validation, reproduced

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(CRACKFOREST / "images" / "001.jpg", scans)
    assert predict_main([f"ckpt={old_best}", f"input={scans}", f"output={tmp_path / 'pred'}"]) == 0
    assert (tmp_path / "pred" / "001_labels.png").exists()
    card = export_model(ckpt=old_best, out=tmp_path / "export", format="torchscript").card
    assert card["parity"]["torchscript"]["passed"]

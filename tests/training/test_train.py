"""End to end through the real composed config (conf/train.yaml), as a user runs it."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar

from helpers import CRACKFOREST, SMALL, make_cfg
from in_process import command
from poc59.core.classes import ARTEFACT
from poc59.core.config import config_dir, register_resolvers
from poc59.training.run import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a training through the composed config: 11 s at a load of 8-10
def test_fast_dev_run_through_the_real_config(tmp_path):
    cfg = make_cfg(tmp_path, *SMALL, "trainer.fast_dev_run=true")
    summary = train(cfg)
    assert summary["encoder"] == "tu-mobilenetv3_small_050"
    assert summary["classes"]["names"] == list(ARTEFACT.names)
    assert (tmp_path / "run" / "summary.json").exists()


def test_progress_bar_refreshes_at_the_logging_interval(tmp_path):
    """Each refresh reads the step loss (a host sync on GPUs): not every step."""
    cfg = make_cfg(tmp_path, "trainer.log_every_n_steps=25")
    bar = instantiate(cfg.callbacks.progress_bar)
    assert isinstance(bar, RichProgressBar) and bar.refresh_rate == 25


@pytest.mark.slow  # a training: 22 s at a load of 8-10
def test_short_run_writes_a_complete_run_folder(tmp_path):
    cfg = make_cfg(tmp_path, *SMALL, "trainer.max_epochs=2")
    summary = train(cfg)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "split.json",
        "class_weights.json",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/version_0/metrics.csv",
    ):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.*"))

    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["val/mIoU"] == summary["val/mIoU"] and on_disk["epochs_run"] == 2
    assert set(on_disk["val/IoU"]) == set(ARTEFACT.names)  # every class by name from the one table
    present = [v for v in on_disk["val/IoU"].values() if v is not None]
    assert on_disk["val/mIoU"] == pytest.approx(sum(present) / len(present))
    assert 0 <= on_disk["baseline_val/mIoU"] <= 1
    assert on_disk["train_images_per_s"] > 0 and on_disk["peak_memory"]["bytes"] > 0
    prov = on_disk["provenance"]
    assert prov["loss"]["name"] == "dice_focal" and prov["loss"]["components"] == {"dice": 0.5, "focal": 0.5}
    assert prov["class_weights"]["weights"] == pytest.approx(
        prov["loss"]["class_weights"], rel=1e-6
    )  # float32 in the loss
    assert prov["batch_size_per_device"] == 8 and prov["precision"] == "32-true" and prov["seed"] == 0
    assert prov["model"]["channels_last"] is False  # auto: on CUDA only
    assert prov["data"]["split_fingerprint"] == json.loads((run / "split.json").read_text())["fingerprint"]

    # the best val/mIoU is the best logged one, and the checkpoint holds it
    rows = list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()))
    logged = [float(r["val/mIoU"]) for r in rows if r.get("val/mIoU")]
    assert len(logged) == 2 and max(logged) == pytest.approx(summary["val/mIoU"], abs=1e-6)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    card = ckpt["hyper_parameters"]["card"]  # the ModelCard (poc59.artifacts.card), the checkpoint's one record
    assert card["classes"]["names"] == list(ARTEFACT.names) and card["classes"]["palette"] == list(ARTEFACT.palette)
    assert len(card["normalization"]["mean"]) == 3 and card["network"]["name"] == "tu-mobilenetv3_small_050"
    assert card["geometry"] == {"policy": "resize", "image_size": 64, "max_side": None}
    assert card["input_multiple"] == 32 and card["family"] == "CNN" and card["provenance"]["run_dir"] == str(run)
    best = next(h for h in on_disk["history"] if h["epoch"] == on_disk["best_epoch"])
    assert card["metrics"]["validation"]["val/mIoU"] == best["mIoU"] == on_disk["val/mIoU"]  # what these weights scored


def test_split_keeps_copies_with_their_original(trained_run):
    split = json.loads((trained_run / "split.json").read_text())  # SMALL's synthetic set: originals and copies
    group = lambda i: i.split("_aug")[0]
    assert not {group(i) for i in split["train"]} & {group(i) for i in split["val"]}
    assert all("_aug" not in i for i in split["val"])


@pytest.mark.slow  # a training on CrackForest's photographs: 14 s at a load of 8-10
def test_real_crackforest_trains_as_it_is(tmp_path, caplog):
    """A few-class set: its classes by name, the baseline line naming class 0 as the class table does, and
    the crack IoU printed, so a model that learned only the background shows it at a glance."""
    caplog.set_level("INFO", logger="poc59.train")
    cfg = make_cfg(
        tmp_path,
        "encoder=tiny",
        "data=artefact",
        f"data.root={CRACKFOREST}",
        "data.image_size=64",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
    )
    summary = train(cfg)
    assert summary["classes"]["names"] == ["background", "crack"]
    assert set(summary["val/IoU"]) == {"background", "crack"}
    assert summary["provenance"]["data"]["images"] == 118
    crack = summary["val/IoU"]["crack"]
    assert "Predicting background everywhere on the same validation set scores val/mIoU" in caplog.text
    shown = "absent" if crack is None else f"{100 * crack:.2f} %"
    assert f"Val IoU of every class but background, at the best epoch ({summary['best_epoch']}): crack {shown}" in (
        caplog.text
    )
    assert "(background)" in summary["baseline"] and "all_clean_baseline_val/mIoU" not in summary


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["convnext_tiny", "segformer_b3", "maxvit_tiny"])
def test_one_training_step_of_each_encoder_at_384(tmp_path, encoder):
    cfg = make_cfg(
        tmp_path,
        f"encoder={encoder}",
        "encoder.weights=null",
        "data.synthetic.n=3",
        "data.image_size=384",
        "data.batch_size=2",
        "data.val_fraction=0.34",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
    )
    summary = train(cfg)
    assert summary["image_size"] == 384 and summary["epochs_run"] == 1
    assert summary["val/mIoU"] is not None and not math.isnan(summary["val/mIoU"])


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=env)


def test_unknown_encoder_lists_presets_and_raw_names(capsys, monkeypatch):
    out = command("train", ["encoder=resnet50"], capsys, monkeypatch)  # the command's answer (tests/in_process.py)
    assert out.returncode == 2
    assert "convnext_tiny" in out.stderr and "segformer_b3" in out.stderr and "maxvit_tiny" in out.stderr
    assert "encoder=custom encoder.name=tu-resnet50" in out.stderr


def test_missing_data_folder_says_where_it_looked(tmp_path, capsys, monkeypatch):
    argv = ["data=artefact", f"data.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}"]
    out = command("train", argv, capsys, monkeypatch)
    assert out.returncode == 2
    assert str(tmp_path / "nope") in out.stderr and "experiment=quickstart" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow  # pip builds a wheel, then train composes its config from it: 39 s at a load of 8-10
def test_configs_ship_inside_the_wheel(tmp_path):
    """poc59 must run from a built wheel, not only from a checkout."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("poc59-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "poc59/conf/train.yaml" in names and "poc59/conf/encoder/segformer_b3.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = _run("poc59.train", "--cfg", "job", "encoder=segformer_b3", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mit_b3" in out.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import poc59.core.config as c; print(c.config_dir())"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.stdout.strip() == str(site / "poc59" / "conf")


def test_compare_encoders_sweeps_the_three_on_one_split():
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=compare_encoders"], return_hydra_config=True)
        runs = [
            compose("train", overrides=["experiment=compare_encoders", f"encoder={e}"])
            for e in ("convnext_tiny", "segformer_b3", "maxvit_tiny")
        ]
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params.encoder == "convnext_tiny,segformer_b3,maxvit_tiny"
    split_keys = (
        "root",
        "image_size",
        "seed",
        "val_fraction",
        "test_fraction",
        "group_pattern",
        "use_aug_copies",
        "split_file",
    )
    assert len({tuple(str(r.data[k]) for k in split_keys) for r in runs}) == 1  # the split cannot differ
    assert [r.data.batch_size for r in runs] == [96, 32, 48]  # each keeps its recommended batch


@pytest.mark.slow
@pytest.mark.parametrize("compile_net", [False, True])
def test_channels_last_and_compile_train_as_the_benchmark_measures(tmp_path, compile_net):
    """module.channels_last (auto: on CUDA only) and module.compile change how the network runs; the checkpoint's
    keys and the network rebuilt from it stay the same."""
    from poc59.artifacts.load import load_model

    cfg = make_cfg(
        tmp_path,
        *SMALL,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "module.channels_last=true",
        f"module.compile={str(compile_net).lower()}",
        "+module.compile_options.backend=aot_eager",
    )  # dynamo and AOT autograd without inductor's minutes of codegen
    summary = train(cfg)
    assert summary["val/mIoU"] is not None
    assert summary["provenance"]["model"] == {
        "channels_last": True,
        "compile": compile_net,
        "compile_options": {"backend": "aot_eager"},
    }
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert all(k.startswith(("segmenter.net.", "loss.")) and "_orig_mod" not in k for k in state)
    weight = next(v for k, v in state.items() if v.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)  # the network ran channels_last
    model = load_model(ckpt)
    assert model.classes.names == ARTEFACT.names


def test_model_flags_are_checked(tmp_path):
    from poc59.core.config import SettingError

    with pytest.raises(SettingError, match="module.compile=auto: choose true or false"):
        train(make_cfg(tmp_path, *SMALL, "module.compile=auto"))

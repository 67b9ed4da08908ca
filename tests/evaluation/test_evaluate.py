"""python -m poc59.evaluate on a real (tiny) trained run: the run's own numbers back, the test split,
another folder, metadata groups, bad input, and evaluate-all over a sweep (slurm/evaluate.sbatch: its body, and
submitted to a real cluster)."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from rich.console import Console

from helpers import CRACKFOREST, SMALL, make_cfg, make_folder
from in_process import command
from poc59.artifacts.export import run_metrics
from poc59.artifacts.load import load_model
from poc59.data.datamodule import SegmentationDataModule
from poc59.evaluate import main, parse_args
from poc59.evaluation import pictures as pictures_module
from poc59.evaluation.passes import predicted_canvases, score_statistics
from poc59.evaluation.report import print_report
from poc59.evaluation.run import EvaluateError, evaluate_run
from poc59.metrics import registry
from poc59.metrics.confusion import recall
from poc59.training.run import train
from slurm_cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
FAST = {"resamples": 200, "device": "cpu"}


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> Path:
    """This module's copy of the session's `trained_run` (a tiny 2-epoch run with a held-out test split, so
    best.ckpt is one of two epochs): evaluate writes its results into the run it scores."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("evaluate") / "run"))


@pytest.fixture(scope="module")
def val_metrics(run) -> dict:
    return evaluate_run(run_dir=run, worst_k=3, **FAST)


def _masks(run: Path, side: str) -> torch.Tensor:
    """The run's `side` masks as the data layer holds them (an independent DataModule from the run's config)."""
    cfg = OmegaConf.load(run / "config.yaml").data
    dm = SegmentationDataModule(
        cfg.root, image_size=cfg.image_size, split_file=run / "split.json", cache_dir=cfg.cache_dir
    )
    dm.setup()
    index = {s.id: i for i, s in enumerate(dm.samples)}
    return dm.data.masks[[index[i] for i in dm.split[side]]]


def _label_counts(masks: torch.Tensor, c: int) -> list[int]:
    return torch.bincount(masks.flatten().long(), minlength=256)[:c].tolist()


def test_reproduces_the_runs_best_val_miou(run, val_metrics):
    summary = json.loads((run / "summary.json").read_text())
    m = val_metrics
    assert m["checkpoint_epoch"] == summary["best_epoch"]  # best.ckpt is the best epoch's state
    assert m["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4)
    for name, iou in summary["val/IoU"].items():
        assert (m["per_class"][name]["iou"] is None) == (iou is None), name
        if iou is not None:
            assert m["per_class"][name]["iou"] == pytest.approx(iou, abs=1e-4), name
    split = json.loads((run / "split.json").read_text())
    assert (
        m["split"] == "val" and m["num_images"] == len(split["val"]) and m["split_fingerprint"] == split["fingerprint"]
    )
    assert m["run_dir"] == str(run) and m["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert m["mode"] == "training_resolution" and m["image_size"] == 64 and m["geometry"]["policy"] == "resize"
    assert m["classes"] == summary["classes"] and m["metric_convention"] == summary["metric_convention"]
    # the confusion matrix holds exactly the validation pixels that are not ignored, class by class
    cm = np.array(m["confusion_matrix"])
    assert cm.sum(1).tolist() == _label_counts(_masks(run, "val"), 16)
    assert [row["support"] for row in m["per_class"].values()] == cm.sum(1).tolist()
    assert m["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    lo, hi = m["miou_ci"]
    assert lo <= m["miou"] <= hi and m["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95, "unit": "image"}
    assert m["miou_legacy"] <= m["miou"]  # absent classes pull the earlier convention down, never up
    assert m["speed"]["ms_per_image"] > 0 and m["speed"]["device"] == "cpu" and m["speed"]["batch_size"] == 8
    on_disk = json.loads((run / "evaluation" / "val" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))


def test_groups_by_material_and_content(run, val_metrics):
    root = Path(json.loads((run / "summary.json").read_text())["provenance"]["data"]["root"])
    meta = {r["id"]: r for r in csv.DictReader((root / "metadata.csv").open())}
    val_ids = json.loads((run / "split.json").read_text())["val"]
    for column in ("material", "content"):
        groups = val_metrics["groups"][column]
        expected = {}
        for i in val_ids:
            expected[meta[i][column]] = expected.get(meta[i][column], 0) + 1
        assert {value: g["num_images"] for value, g in groups.items()} == expected
    if len(val_metrics["groups"]["material"]) == 1:  # one group is the whole split
        (only,) = val_metrics["groups"]["material"].values()
        assert only["miou"] == pytest.approx(val_metrics["miou"])


def test_pictures_are_real_pngs(run, val_metrics):
    folder = run / "evaluation" / "val"
    assert set(val_metrics["pictures"]) == {"confusion_matrix", "iou_bars", "sample", "worst"}
    for name, rel in val_metrics["pictures"].items():
        with Image.open(folder / rel) as im:
            im.verify()
        with Image.open(folder / rel) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200, name
        rgb = pixels.astype(np.int32)  # one integer a colour: np.unique over rows takes seconds a picture
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert len(colours) > 10, f"{name}: (nearly) blank"
    assert len(val_metrics["worst_images"]) == min(3, val_metrics["num_images"])
    worst = [w["miou"] for w in val_metrics["worst_images"]]
    assert worst == sorted(worst)


def test_cli_prints_the_table(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # Rich wraps to the terminal's width
    assert main([f"run_dir={run}", f"out={tmp_path}", "pictures=false", "bootstrap.resamples=50"]) == 0
    out = capsys.readouterr().out
    for text in (
        "Clean",
        "Lightleak",
        "IoU [95 % CI]",
        "precision",
        "earlier system's convention",
        "pixel accuracy",
        "frequency-weighted IoU",
        "ms/image",
        "mIoU by material",
    ):
        assert text in out, text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pictures"] == {} and metrics["bootstrap"]["resamples"] == 50
    if any(not r["present"] for r in metrics["per_class"].values()):
        assert "absent" in out
    from rich.console import Console

    from poc59.evaluation.report import print_report

    narrow = Console(width=60, record=True)  # the table shrinks, the class names stay whole
    print_report(metrics, narrow)
    text = narrow.export_text()
    for name in metrics["classes"]["names"]:
        assert any(line.split("│")[2].strip() == name for line in text.splitlines() if line.count("│") > 3), name


def test_test_split(run):
    m = evaluate_run(run_dir=run, split="test", pictures=False, **FAST)
    test_ids = json.loads((run / "split.json").read_text())["test"]
    assert m["split"] == "test" and m["num_images"] == len(test_ids) > 0
    assert np.array(m["confusion_matrix"]).sum(1).tolist() == _label_counts(_masks(run, "test"), 16)
    assert (run / "evaluation" / "test" / "metrics.json").exists()


def test_a_run_without_a_test_split_says_how_to_get_one(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluation", "tensorboard", "csv"))
    split = json.loads((copy / "split.json").read_text())
    split = {
        "train": split["train"] + split["test"],
        "val": split["val"],
        "test": [],
    }  # no fingerprint: a deliberate edit
    (copy / "split.json").write_text(json.dumps(split))
    with pytest.raises(EvaluateError, match=r"held out no test images.*data\.test_fraction"):
        evaluate_run(run_dir=copy, split="test", pictures=False, **FAST)


def test_another_data_folder(run, tmp_path):
    other = make_folder(tmp_path / "other", n=4, copies=1, size=(48, 40), classes=5)
    m = evaluate_run(run_dir=run, data_root=other, pictures=False, **FAST)  # default split for another folder: all
    assert m["split"] == "all" and m["num_images"] == 4 and m["data_root"] == str(other)
    dm = SegmentationDataModule(other, image_size=64, use_aug_copies=False, cache=False)
    dm.setup()
    originals = [i for i, s in enumerate(dm.samples) if not s.is_copy]
    assert np.array(m["confusion_matrix"]).sum(1).tolist() == _label_counts(dm.data.masks[originals], 16)
    assert m["groups"] == {}  # no metadata.csv
    assert (run / "evaluation" / "other-all" / "metrics.json").exists()  # never over the run's own val results

    with pytest.raises(EvaluateError, match=r"2 classes \(background, crack\).*16.*classes\.json"):
        evaluate_run(run_dir=run, data_root=CRACKFOREST, pictures=False, **FAST)


def test_bad_input_names_the_fix(run, tmp_path, caplog):
    with pytest.raises(EvaluateError, match=r"not a run folder.*python -m poc59.train.*ckpt="):
        evaluate_run(run_dir=tmp_path / "nope")
    with pytest.raises(EvaluateError, match=r"run_dir=.*or ckpt="):
        evaluate_run()
    alone = tmp_path / "model.ckpt"
    shutil.copy(run / "checkpoints" / "best.ckpt", alone)
    with pytest.raises(EvaluateError, match=r"not inside a run folder.*pass data\.root="):
        evaluate_run(ckpt=alone)
    with pytest.raises(EvaluateError, match=r"unknown split 'train'.*split=val, split=test or split=all"):
        evaluate_run(run_dir=run, split="train")
    with pytest.raises(EvaluateError, match=r"level between 0 and 1 \(e\.g\. bootstrap\.level=0\.95\)"):
        evaluate_run(run_dir=run, level=95)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "config.yaml", unfinished)
    with pytest.raises(EvaluateError, match=r"best\.ckpt not found.*ckpt=.*last\.ckpt"):
        evaluate_run(run_dir=unfinished)
    with pytest.raises(EvaluateError, match=r"unknown argument 'resamples=5'.*bootstrap\.resamples"):
        parse_args(["run_dir=x", "resamples=5"])
    with pytest.raises(EvaluateError, match="pictures=maybe: expected true or false"):
        parse_args(["run_dir=x", "pictures=maybe"])
    assert parse_args(["ckpt=a.ckpt", "data.root=d", "bootstrap.level=0.9", "pictures=false"]) == {
        "ckpt": "a.ckpt",
        "data_root": "d",
        "level": 0.9,
        "pictures": False,
    }
    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={tmp_path / 'nope'}"]) == 2
    assert "not a run folder" in caplog.text


def test_a_negative_batch_size_is_a_setting(run, caplog):
    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={run}", "batch_size=-5"]) == 2
    assert "batch_size=-5: images per forward pass, a whole number >= 1 (e.g. batch_size=8)" in caplog.text
    assert "Traceback" not in caplog.text


def _tmpfs(where: Path, size: str, read_only: bool) -> Path:
    """A tmpfs mounted at `where`; where mounting is not allowed the test skips with the reason, and fails
    under CI (CI set), whose machines must run it (as the slurm fixture does)."""
    where.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here to make a full or read-only disk: {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return where


def test_a_disk_that_cannot_be_mounted_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "mount").write_text("#!/bin/sh\necho 'mount: permission denied' >&2\nexit 32\n")
    (bin_ / "mount").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setenv("CI", "1")
    stops = (pytest.fail.Exception, pytest.skip.Exception)  # caught both ways: a skip must not skip this test
    with pytest.raises(stops, match="cannot mount a tmpfs here.*permission denied") as ci:
        _tmpfs(tmp_path / "ci", "1m", False)
    assert ci.type is pytest.fail.Exception
    monkeypatch.delenv("CI")
    with pytest.raises(stops, match="cannot mount a tmpfs here.*permission denied") as here:
        _tmpfs(tmp_path / "here", "1m", False)
    assert here.type is pytest.skip.Exception


@pytest.fixture
def disk(tmp_path):
    """mount(size, read_only) -> a private tmpfs folder: a full or read-only disk for real (root in a container
    that may mount, as on this project's machines and CI), unmounted after the test."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = _tmpfs(tmp_path / f"disk{len(mounted)}", size, read_only)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_out_folder_is_named_before_any_scoring(run, disk, caplog):
    read_only = disk("1m", read_only=True)
    with caplog.at_level(logging.INFO):
        assert main([f"run_dir={run}", f"out={read_only / 'eval'}", "bootstrap.resamples=20"]) == 2
    assert f"out={read_only / 'eval'}: cannot write there (a read-only file system" in caplog.text
    assert "Pass out=<a folder on a writable disk with free space>" in caplog.text
    assert "Evaluating " not in caplog.text and "Traceback" not in caplog.text  # refused before the model or data


def test_a_full_out_folder_is_named_and_leaves_no_partial_results(run, disk, caplog):
    full = disk("48k")  # room for a picture or two, not for all of them and metrics.json
    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={run}", f"out={full}", "bootstrap.resamples=20"]) == 2
    assert f"out={full}: cannot write there (no space left on its disk" in caplog.text
    assert "Traceback" not in caplog.text
    assert [p.name for p in full.rglob("*")] == []  # neither metrics.json nor the pictures written before


@pytest.mark.slow  # a training of its own: 18 s at a load of 8-10
def test_data_changed_since_training_is_named_and_scored_only_when_asked(tmp_path, caplog):
    data = make_folder(tmp_path / "data", n=6, copies=1, size=(32, 32))
    train(
        make_cfg(
            tmp_path,
            "data=artefact",
            f"data.root={data}",
            *SMALL[:1],
            "data.image_size=32",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0",
            "callbacks.val_overlays=null",
        )
    )
    run = tmp_path / "run"
    val = json.loads((run / "split.json").read_text())["val"][0]
    image = data / "images" / f"{val}.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # a validation image edited since
    mask = data / "annotations" / "img000_aug1.png"  # a training mask relabelled since
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)

    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={run}", "bootstrap.resamples=20", "pictures=false"]) == 2
    message = caplog.records[-1].getMessage()
    assert f"{data} differs from the files {run} was trained and validated on" in message
    assert "modified after " in message and str(image) in message and str(mask) in message
    assert "restore those files, or pass allow_changed_data=true" in message
    assert not (run / "evaluation").exists()

    assert main([f"run_dir={run}", "bootstrap.resamples=20", "pictures=false", "allow_changed_data=true"]) == 0
    changed = json.loads((run / "evaluation" / "val" / "metrics.json").read_text())["data_changed"]
    assert sorted(changed["modified"]) == sorted([str(image), str(mask)])

    for gone in (data / "images" / f"{val}.png", data / "annotations" / f"{val}.png"):  # a validation pair removed
        gone.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={run}", "bootstrap.resamples=20", "pictures=false", "allow_changed_data=true"]) == 2
    message = caplog.records[-1].getMessage()
    assert "point data.root at the data it was trained on" in message
    assert "data.split_file" not in message  # a key train takes, not evaluate: that advice would fail when pasted


@pytest.mark.slow  # an evaluation with its pictures and two scorings more: 34 s at a load of 8-10
def test_crop_geometry_scores_every_tile_once(run, tmp_path, monkeypatch):
    """policy=crop: validation-style tiles; per-image matrices, the split's matrix and the pasted label maps agree."""
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["card"]["geometry"] = {
        "policy": "crop",
        "image_size": 32,
        "max_side": 64,
    }  # 2 x 2 tiles a canvas
    torch.save(ckpt, tmp_path / "crop.ckpt")
    cfg = OmegaConf.load(run / "config.yaml").data
    import poc59.evaluation.pictures as pictures

    drawn = []
    real = pictures.sample_grid_figure
    monkeypatch.setattr(
        pictures, "sample_grid_figure", lambda im, t, p, *a: drawn.append((im, t, p)) or real(im, t, p, *a)
    )
    m = evaluate_run(ckpt=tmp_path / "crop.ckpt", data_root=cfg.root, pictures=True, **FAST)
    # a checkpoint outside its run, with a data folder: all its source images, at the checkpoint's geometry
    assert m["run_dir"] is None and m["split"] == "all" and m["num_images"] == 10 and m["geometry"]["policy"] == "crop"
    out = tmp_path / "crop-evaluation" / f"{Path(cfg.root).name}-all"
    assert (out / "metrics.json").exists()

    model = load_model(tmp_path / "crop.ckpt")
    dm = SegmentationDataModule(
        cfg.root, image_size=32, policy="crop", max_side=64, use_aug_copies=False, cache_dir=cfg.cache_dir
    )
    dm.setup()
    indices = [i for i, s in enumerate(dm.samples) if not s.is_copy]
    per_image = score_statistics(model, dm, indices, 5, torch.device("cpu"), nullcontext())[0]["confusion"]
    confmat = per_image.sum(0)  # every pixel belongs to one image
    assert confmat.tolist() == m["confusion_matrix"]
    masks = [dm.data.mask(i) for i in indices]  # each image's content (ragged under crop)
    assert confmat.sum(1).tolist() == _label_counts(torch.cat([m.flatten() for m in masks]), 16)  # each pixel once
    # its pictures (drawn by the same evaluation): every panel cropped to its image's content, no canvas padding
    assert drawn and (out / "sample.png").exists()
    sizes = {tuple(dm.data.sizes[i].tolist()) for i in indices}
    shown = [image.shape[:2] for images, _, _ in drawn for image in images]
    assert set(shown) <= sizes and any(hw != (64, 64) for hw in shown)  # content, not the 64 x 64 canvas
    for images, targets, preds in drawn:
        for image, target, pred in zip(images, targets, preds):
            assert target.shape == pred.shape == image.shape[:2] and (target != 255).any()
    canvases = torch.from_numpy(predicted_canvases(model, dm, indices, 3, torch.device("cpu"), nullcontext()))
    for k in range(len(indices)):
        h, w = masks[k].shape
        keep = masks[k] != 255
        pred = canvases[k, :h, :w]
        pasted = torch.bincount(masks[k][keep].long() * 16 + pred[keep].long(), minlength=256).view(16, 16)
        assert torch.equal(pasted, per_image[k]), k


# ---------------------------------------------------------------- evaluate-all, through slurm/evaluate.sbatch


def test_evaluate_sbatch_is_valid_bash():
    check = subprocess.run(["bash", "-n", str(REPO / "slurm" / "evaluate.sbatch")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def _sweep_to_evaluate(run: Path, tmp_path: Path) -> Path:
    """Four jobs: 0 finished with a broken checkpoint (it fails), 1 and 2 finished, 3 started, never finished."""
    sweep = tmp_path / "sweep"
    keep = shutil.ignore_patterns("evaluation", "tensorboard", "csv")
    shutil.copytree(run, sweep / "0", ignore=keep)
    (sweep / "0" / "checkpoints" / "best.ckpt").write_bytes(b"truncated")
    for n in ("1", "2"):
        shutil.copytree(run, sweep / n, ignore=keep)
    (sweep / "3").mkdir()
    shutil.copy(run / "config.yaml", sweep / "3")
    return sweep


def _job_env(private_cache: Path) -> dict:
    """What a job needs to run this checkout's poc59 with the test cache."""
    return {
        **os.environ,
        "POC59_CACHE": str(private_cache),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    }


def _check_evaluate_all(run: Path, sweep: Path, returncode: int, log: str) -> None:
    assert returncode == 3, log[-4000:]  # one run failed (exit 3: done, a part failed); the others were evaluated
    report = json.loads((sweep / "evaluation-val.json").read_text())
    assert report["counts"] == {"evaluated": 2, "skipped": 1, "failed": 1}
    status = {Path(r["run_dir"]).name: r for r in report["runs"]}
    assert [status[n]["status"] for n in "0123"] == ["failed", "evaluated", "evaluated", "skipped"]
    assert "best.ckpt" in status["0"]["reason"] and "summary.json" in status["3"]["reason"]
    summary = json.loads((run / "summary.json").read_text())
    for n in "12":
        metrics = json.loads((sweep / n / "evaluation" / "val" / "metrics.json").read_text())
        assert Path(status[n]["metrics"]) == sweep / n / "evaluation" / "val" / "metrics.json"  # where it really is
        assert metrics["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4) == status[n]["miou"]
    assert "evaluated" in log and "failed" in log


SBATCH_ARGS = ("bootstrap.resamples=50", "pictures=false")


def test_evaluate_all_over_a_sweep(run, tmp_path, capsys, monkeypatch):
    """`python -m poc59.evaluate sweep=...` answered in this process: every finished run evaluated, the others
    named, exit 3 (the job script and the cluster below run the same command in real processes)."""
    sweep = _sweep_to_evaluate(run, tmp_path)
    said = command("evaluate", [f"sweep={sweep}", *SBATCH_ARGS], capsys, monkeypatch)
    _check_evaluate_all(run, sweep, said.returncode, said.stdout + said.stderr)


@pytest.mark.slow  # bash and a fresh python process evaluating two runs; the test above checks the command itself
def test_evaluate_all_over_a_sweep_in_the_job_script(run, tmp_path, private_cache):
    """slurm/evaluate.sbatch's body as a job runs it (bash, no scheduler): every finished run evaluated."""
    sweep = _sweep_to_evaluate(run, tmp_path)
    script = [str(REPO / "slurm" / "evaluate.sbatch"), f"sweep={sweep}", *SBATCH_ARGS]
    done = subprocess.run(
        ["bash", *script], capture_output=True, text=True, env=_job_env(private_cache), cwd=tmp_path, timeout=600
    )
    _check_evaluate_all(run, sweep, done.returncode, done.stdout + done.stderr)


# the states a job ends in (`scontrol show job` keeps it MinJobAge, 300 s on the test cluster, after it ends)
ENDED = set("COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY PREEMPTED BOOT_FAIL DEADLINE".split())


def _submit_and_wait(args: list[str], slurm: Cluster, env: dict, cwd: Path, timeout: float = 600) -> int:
    """`sbatch <args>`, then its job's exit code once it has ended, looked up every half second. (`sbatch --wait`
    gives the same code but looks 2, 10, 42, 74 s after submitting: a job ending at 11 s is answered at 42 s.)"""
    submitted = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = slurm.job(job)
        if fields.get("JobState") in ENDED:
            code, signal = (int(n) for n in fields["ExitCode"].split(":"))
            return code or -signal
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"job {job} still not ended after {timeout:.0f} s: {slurm.job(job)}")


@pytest.mark.slow  # a job on the cluster, a fresh python process evaluating two runs: 27 s at a load of 10-12
def test_evaluate_all_over_a_sweep_submitted_to_slurm(run, tmp_path, private_cache, slurm):
    """The same job submitted as a user does, to a real cluster (the `slurm` fixture: CI's, or one started
    here; it skips with its reason where none can run, and fails under CI); command-line options override
    the script's #SBATCH lines."""
    sweep = _sweep_to_evaluate(run, tmp_path)
    job_out = tmp_path / "job.out"
    returncode = _submit_and_wait(
        [
            f"--partition={slurm.partition}",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--mem=2G",
            "--time=10",
            f"--output={job_out}",
            str(REPO / "slurm" / "evaluate.sbatch"),
            f"sweep={sweep}",
            *SBATCH_ARGS,
        ],
        slurm,
        env={**slurm.env, **_job_env(private_cache)},
        cwd=tmp_path,
    )
    _check_evaluate_all(run, sweep, returncode, job_out.read_text() if job_out.exists() else f"job {returncode}")


def test_native_mode_scores_full_resolution_predictions(run, val_metrics):
    """mode=native: predict's own output at each image's stored size, against the full-resolution mask."""
    from poc59.data.sources import discover_pairs
    from poc59.inference.image import predict_label_map

    metrics = evaluate_run(run_dir=run, mode="native", pictures=False, **FAST)
    assert metrics["mode"] == "native" and "not comparable" in metrics["mode_convention"]
    assert (run / "evaluation" / "val-native" / "metrics.json").exists()
    assert Path(metrics["folder"]) == run / "evaluation" / "val-native"
    assert (run / "evaluation" / "val" / "metrics.json").exists()  # the training-resolution result is kept apart

    split = json.loads((run / "split.json").read_text())
    samples = {s.id: s for s in discover_pairs(OmegaConf.load(run / "config.yaml").data.root)[0]}
    masks = [np.asarray(Image.open(samples[i].mask)) for i in split["val"]]
    assert (masks[0].shape[0], masks[0].shape[1]) != (64, 64)  # really full resolution, not the 64 px canvas
    cm = np.asarray(metrics["confusion_matrix"])
    c = cm.shape[0]
    assert cm.sum(1).tolist() == np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)[:c].tolist()

    # the predicted labels are predict's: recount the whole matrix independently
    model = load_model(run / "checkpoints" / "best.ckpt")
    expected = np.zeros((c, c), np.int64)
    for i, mask in zip(split["val"], masks):
        labels = predict_label_map(model, np.asarray(Image.open(samples[i].image).convert("RGB")), device="cpu")
        valid = mask != 255
        np.add.at(expected, (mask[valid], labels[valid]), 1)
    assert metrics["num_images"] == len(masks) and cm.tolist() == expected.tolist()
    from rich.console import Console

    from poc59.evaluation.report import print_report

    console = Console(record=True, width=200)
    print_report(metrics, console)
    assert "at their stored resolution (mode=native" in " ".join(console.export_text().split())  # titles wrap
    with pytest.raises(EvaluateError, match="mode=sideways"):
        evaluate_run(run_dir=run, mode="sideways", **FAST)


def test_evaluate_on_a_second_gpu_times_and_waits_on_that_gpu():
    """device=cuda:1: the timing syncs and the feed's copy events are cuda:1's, not the default cuda:0's
    (on the CPU stand-in for CUDA, tests/fake_cuda.py); the per-image matrices match a CPU pass."""
    from types import SimpleNamespace

    from fake_cuda import FakeCuda
    from poc59.data.feed import BatchFeed
    from poc59.evaluation.passes import batch_confmats, run_feed

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 4, (5, 8, 8), dtype=torch.uint8, generator=g)
    masks[:, 0] = 255
    net = torch.nn.Conv2d(3, 4, 3, padding=1)

    def counts(device: torch.device) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        feed = BatchFeed(images, masks, range(5), 2, shuffle=False, drop_last=False, device=device)
        model = SimpleNamespace(segmenter=lambda x: net(x.float()))
        run_feed(model, feed, nullcontext(), lambda p, m, u: out.append(batch_confmats(p, m.long(), 4, 255).to("cpu")))
        return out

    expected = counts(torch.device("cpu"))
    with FakeCuda() as cuda:
        net.to("cuda:1")
        got = counts(torch.device("cuda:1"))
    assert [torch.equal(a, b) for a, b in zip(got, expected)] == [True] * 3
    assert cuda.devices_called("synchronize", "event.record") == {torch.device("cuda:1")}


def test_a_metric_is_added_by_one_function_and_one_registration(run, monkeypatch):
    """Registered in poc59.metrics.registry, a metric reaches metrics.json, the printed report (with its
    meaning) and an exported model's card, with values checked against numpy."""
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))  # the registration ends with the test

    @registry.metric(
        "balanced_accuracy",
        "balanced_accuracy",
        "balanced accuracy",
        "mean recall over the classes in the target",
        stacked=False,
    )
    def balanced_accuracy(cm):
        return recall(cm).nanmean()

    @registry.metric("specificity", "specificity", "specificity", "TN / (TN + FP)", per_class=True, stacked=False)
    def specificity(cm):
        cm = torch.as_tensor(cm, dtype=torch.float64)
        fp = cm.sum(0) - cm.diagonal()
        tn = cm.sum() - cm.sum(0) - cm.sum(1) + cm.diagonal()
        return tn / (tn + fp)

    out = run / "evaluation" / "registered"
    try:
        m = evaluate_run(run_dir=run, out=out, pictures=False, **FAST)
        cm = np.array(m["confusion_matrix"], dtype=np.float64)
        rows = cm.sum(1)
        assert m["balanced_accuracy"] == pytest.approx(np.mean(np.diag(cm)[rows > 0] / rows[rows > 0]))
        for c, row in enumerate(m["per_class"].values()):
            fp, tn = cm[:, c].sum() - cm[c, c], cm.sum() - cm[:, c].sum() - cm[c].sum() + cm[c, c]
            assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert json.loads((out / "metrics.json").read_text())["balanced_accuracy"] == m["balanced_accuracy"]
        console = Console(record=True, width=400)
        print_report(m, console)
        text = console.export_text()
        assert "balanced accuracy: " in text and "mean recall over the classes in the target" in text
        assert "specificity" in text and "TN / (TN + FP)" in text
        card = run_metrics(load_model(run / "checkpoints" / "best.ckpt", "cpu"), run)
        (entry,) = [e for e in card["evaluation"] if e["file"] == str(out / "metrics.json")]
        assert entry["balanced_accuracy"] == m["balanced_accuracy"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow  # two evaluations with pictures: 17 s at a load of 8-10
def test_a_failed_re_evaluation_leaves_no_earlier_metrics_pointing_at_removed_pictures(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    evaluate_run(run_dir=run, out=out, worst_k=2, **FAST)
    assert (out / "metrics.json").exists() and (out / "confusion_matrix.png").exists()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pictures_module, "iou_bars_figure", full)  # the disk fills after the first picture
    with pytest.raises(EvaluateError, match="no space left"):
        evaluate_run(run_dir=run, out=out, worst_k=2, **FAST)
    assert not (out / "metrics.json").exists()  # the old record named confusion_matrix.png, now removed
    assert not (out / "confusion_matrix.png").exists()


def test_a_run_without_its_split_json_is_named_with_advice_evaluate_takes(run, tmp_path, caplog):
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "split.json").unlink()
    with caplog.at_level(logging.ERROR):
        assert main([f"run_dir={copy}", "bootstrap.resamples=20", "pictures=false"]) == 2
    said = caplog.messages[-1]
    assert said.startswith(f"{copy / 'split.json'} not found") and "Traceback" not in caplog.text
    assert "data.split_file" not in said  # a key train takes, not evaluate
    other = make_folder(tmp_path / "other", n=4, copies=1, size=(48, 40), classes=5)
    advised = said.rsplit("python -m poc59.evaluate ", 1)[1].replace("<another folder>", str(other)).split()
    assert main([*advised, "bootstrap.resamples=20", "pictures=false", f"out={tmp_path / 'out'}"]) == 0

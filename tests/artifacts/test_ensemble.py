"""Fold ensembles: three real fold checkpoints of a tiny cross-validation, averaged in probability, used by
predict, evaluate and export alike."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SMALL, make_cfg
from poc59.artifacts.ensemble import COMBINATION, EnsembleSegmenter, load_ensemble
from poc59.artifacts.load import load_model
from poc59.artifacts.trained import ModelLoadError
from poc59.evaluate import main as evaluate_main
from poc59.evaluation.run import EvaluateError, evaluate_run
from poc59.export import main as export_main
from poc59.inference.image import predict_label_map
from poc59.predict import main as predict_main
from poc59.training.run import train

FOLDS = 3


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> list[Path]:
    """Three folds of `data.cv.folds=3` with a held-out test split, one short epoch each, as a sweep folder."""
    sweep = tmp_path_factory.mktemp("ensemble") / "sweep"
    for k in range(FOLDS):
        cfg = make_cfg(
            sweep,
            *SMALL,
            "data.cv.folds=3",
            f"data.cv.fold={k}",
            "data.test_fraction=0.2",
            "trainer.max_epochs=1",
            "trainer.num_sanity_val_steps=0",
            "callbacks.val_overlays=null",
            f"seed={k}",  # different weights per fold
            "data.seed=0",  # one partition
        )
        cfg.paths.run_dir = str(sweep / str(k))
        train(cfg)
    return [sweep / str(k) for k in range(FOLDS)]


def _best(runs: list[Path]) -> list[Path]:
    return [r / "checkpoints" / "best.ckpt" for r in runs]


@pytest.mark.slow  # `folds` trains three runs: 36 s at a load of 8-10, needed by every test here
def test_the_ensemble_is_the_mean_of_its_members_probabilities(folds):
    ensemble = load_ensemble(_best(folds))
    members = [load_model(p) for p in _best(folds)]
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = ensemble.segmenter(images)
        probs = torch.stack([m.segmenter(images).softmax(1) for m in members]).mean(0)
    assert torch.allclose(got.softmax(1), probs, atol=1e-6)
    assert torch.equal(got.argmax(1), probs.argmax(1))
    record = ensemble.card.provenance["ensemble"]
    assert record["combination"] == COMBINATION and [m["checkpoint"] for m in record["members"]] == [
        str(p.resolve()) for p in _best(folds)
    ]
    assert [m["cv"]["fold"] for m in record["members"]] == [0, 1, 2]


@pytest.mark.slow  # `folds`: three trainings (36 s at a load of 8-10)
def test_two_identical_checkpoints_equal_one(folds, tmp_path):
    one = _best(folds)[0]
    twin = tmp_path / "twin.ckpt"
    shutil.copy(one, twin)
    single, pair = load_model(one), load_ensemble([one, twin])
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(pair.segmenter(images).softmax(1), single.segmenter(images).softmax(1), atol=1e-6)
    with pytest.raises(ModelLoadError, match="listed twice"):
        load_ensemble([one, one])


@pytest.mark.slow  # `folds`: three trainings (36 s at a load of 8-10)
def test_members_that_differ_in_classes_or_geometry_are_refused_by_name(folds, tmp_path):
    base = torch.load(_best(folds)[1], map_location="cpu", weights_only=False)
    renamed = tmp_path / "renamed.ckpt"
    names = base["hyper_parameters"]["card"]["classes"]["names"]
    base["hyper_parameters"]["card"]["classes"]["names"] = [*names[:-1], "Something else"]
    torch.save(base, renamed)
    with pytest.raises(ModelLoadError, match=f"{renamed}: its classes differ from {_best(folds)[0]}"):
        load_ensemble([_best(folds)[0], renamed])
    base = torch.load(_best(folds)[1], map_location="cpu", weights_only=False)
    base["hyper_parameters"]["card"]["geometry"]["image_size"] = 96
    resized = tmp_path / "resized.ckpt"
    torch.save(base, resized)
    with pytest.raises(ModelLoadError, match=f"{resized}: its geometry differ"):
        load_ensemble([_best(folds)[0], resized])


@pytest.mark.slow  # `folds`, then two predict batches: 34 s at a load of 8-10
def test_predict_with_three_fold_checkpoints_writes_the_ensembles_label_maps(folds, tmp_path):
    from PIL import Image

    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (80, 112, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(scans / "a.png")
    out = tmp_path / "maps"
    ckpts = ",".join(map(str, _best(folds)))
    assert predict_main([f"ckpt=[{ckpts}]", f"input={scans}", f"output={out}", "overlay=false"]) == 0
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert np.array_equal(labels, predict_label_map(load_ensemble(_best(folds)), pixels))
    stats = json.loads((out / "statistics.json").read_text())
    assert len(stats["ensemble"]["members"]) == FOLDS
    sweep_out = tmp_path / "maps-sweep"
    assert predict_main([f"sweep={folds[0].parent}", f"input={scans}", f"output={sweep_out}", "overlay=false"]) == 0
    assert np.array_equal(np.asarray(Image.open(sweep_out / "a_labels.png")), labels)  # the same members


@pytest.mark.slow  # `folds`, then three evaluations: 23 s at a load of 8-10
def test_evaluate_scores_the_fold_ensemble_on_the_test_split_only(folds, tmp_path, caplog):
    metrics = evaluate_run(run_dirs=[str(f) for f in folds], resamples=20, pictures=False)
    assert metrics["split"] == "test" and len(metrics["ensemble"]["members"]) == FOLDS
    assert Path(metrics["folder"]) == folds[0].parent / "ensemble-0-1-2-evaluation" / "test"  # by its members
    test_ids = json.loads((folds[0] / "split.json").read_text())["test"]
    assert metrics["num_images"] == len(test_ids)
    with pytest.raises(EvaluateError, match="validated on different images"):
        evaluate_run(run_dirs=[str(f) for f in folds], split="val", pictures=False)
    assert evaluate_main([f"run_dirs=[{folds[0]},{folds[1]}]", "split=all", "pictures=false"]) == 2
    assert "split=test" in caplog.text


@pytest.mark.slow  # exports three members as one graph and checks parity: about 70 s on 2 cores
def test_the_exported_ensemble_is_one_graph_that_passes_parity(folds, tmp_path):
    out = tmp_path / "export"
    assert export_main([f"sweep={folds[0].parent}", f"out={out}"]) == 0
    card = json.loads((out / "model.card.json").read_text())
    assert card["parity"]["onnx"]["passed"] and card["parity"]["torchscript"]["passed"]
    assert card["source"]["ensemble"] == [str(p.resolve()) for p in _best(folds)]
    assert card["source"]["sha256"] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in _best(folds)]
    assert len(card["provenance"]["ensemble"]["members"]) == FOLDS
    ensemble = load_ensemble(_best(folds))
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ensemble.segmenter(images)
    for name in ("model.onnx", "model.pt"):
        exported = load_model(out / name)
        with torch.no_grad():
            got = exported.segmenter(images)
        assert (got - want).abs().max() <= 1e-4, name
        assert exported.card.provenance["ensemble"]["combination"] == COMBINATION
    assert isinstance(ensemble.segmenter, EnsembleSegmenter)

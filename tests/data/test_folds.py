"""Cross-validation folds: grouped stratified k-fold and leave one group out, against the rules they promise."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import make_folder
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.folds import MIN_FOLD_IMAGES, OTHER, make_folds, sweep_values
from poc59.data.sources import DataError, discover_pairs
from poc59.data.split import grouped_split

MATERIALS = ["Canvas"] * 9 + ["Paper"] * 7 + ["Glass"] * 5 + ["Wood"] * 2 + ["Film"] * 1  # 24 originals


def _folder(root: Path, materials: list[str] = MATERIALS, copies: int = 2) -> Path:
    make_folder(root, n=len(materials), copies=copies, size=(16, 16))
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "material", "content"])
        for i, m in enumerate(materials):
            w.writerow([f"img{i:03d}", m, "Artistic depiction" if i % 2 else "Photographic depiction"])
    return root


def _groups(samples, indices) -> set[str]:
    return {samples[i].group for i in indices}


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("test_fraction", [0.0, 0.15])
def test_k_folds_partition_the_groups_stratified_and_seeded(tmp_path, k, test_fraction):
    samples = discover_pairs(_folder(tmp_path))[0]
    folds = make_folds(samples, folds=k, seed=3, test_fraction=test_fraction)
    groups = {s.group for s in samples}
    # disjoint, complete over the groups outside test, and the test is a plain split's test (same seed)
    held = [set(f) for f in folds.folds]
    assert sum(len(h) for h in held) == len(set().union(*held)) == len(groups) - len(folds.test)
    assert set().union(*held) | folds.test == groups
    if test_fraction:
        plain = grouped_split(samples, 0.2, seed=3, test_fraction=test_fraction)
        assert folds.test == _groups(samples, plain.test)
    # balanced: sizes differ by at most one group, and every material is spread over the folds
    assert max(map(len, held)) - min(map(len, held)) <= 1
    material = {s.group: s.material for s in samples}
    for m in set(MATERIALS):
        per_fold = [sum(1 for g in h if material[g] == m) for h in held]
        assert max(per_fold) - min(per_fold) <= 1, (m, per_fold)
    # fold i: validates on its groups (originals only), trains on every other fold's groups (copies too)
    for i in range(k):
        split = folds.split(i)
        assert _groups(samples, split.val) == held[i]
        assert all(not samples[j].is_copy for j in split.val)
        assert _groups(samples, split.train) == groups - held[i] - folds.test
        assert _groups(samples, split.test) == folds.test
        assert len(split.train) == sum(1 for s in samples if s.group in groups - held[i] - folds.test)
    # the same partition whoever asks (every encoder, every fold run); another seed, another partition
    again = make_folds(samples, folds=k, seed=3, test_fraction=test_fraction)
    assert again.folds == folds.folds and again.fingerprint() == folds.fingerprint()
    assert make_folds(samples, folds=k, seed=4, test_fraction=test_fraction).folds != folds.folds
    records = [folds.record(i) for i in range(k)]
    assert len({r["partition_fingerprint"] for r in records}) == 1 and [r["fold"] for r in records] == list(range(k))


def test_rare_classes_are_spread_over_the_folds(tmp_path):
    samples = discover_pairs(_folder(tmp_path, ["Canvas"] * 100, copies=0))[0]
    presence = np.zeros((len(samples), 4), bool)
    presence[:, 0] = True
    presence[[3, 40, 41, 97], 3] = True  # a rare class (in under 5 % of the images, as the split counts rare)
    rare = {samples[i].group for i in np.flatnonzero(presence[:, 3])}
    for seed in range(5):
        folds = make_folds(samples, folds=4, seed=seed, presence=presence)
        assert [len(rare & set(f)) for f in folds.folds] == [1, 1, 1, 1]
    by_chance = [make_folds(samples, folds=4, seed=seed).folds for seed in range(5)]  # not stratified on it
    assert any([len(rare & set(f)) for f in folds] != [1, 1, 1, 1] for folds in by_chance)


def test_leave_one_material_out_makes_one_fold_per_material(tmp_path):
    samples = discover_pairs(_folder(tmp_path))[0]
    root = tmp_path
    with pytest.raises(DataError) as refused:
        make_folds(samples, by="material", root=root)
    said = str(refused.value)
    assert "Film (1), Wood (2)" in said and f"at least {MIN_FOLD_IMAGES} each" in said
    assert "data.cv.min_images=3" in said
    folds = make_folds(samples, by="material", root=root, min_images=3)
    assert folds.names == ("Canvas", "Glass", "Paper", OTHER)
    material = {s.group: s.material for s in samples}
    for name, held in zip(folds.names, folds.folds):
        expected = {"Wood", "Film"} if name == OTHER else {name}
        assert {material[g] for g in held} == expected
        assert len(held) == sum(1 for m in MATERIALS if m in expected)
    assert folds.index("Glass") == 1 and folds.index(1) == 1
    record = folds.record("Paper")
    assert record["value"] == "Paper" and record["by"] == "material" and record["fold_images"] == [9, 5, 7, 3]
    with pytest.raises(DataError, match="data.cv.fold=Marble: there are 4 folds .*0=Canvas"):
        folds.index("Marble")
    by_content = make_folds(samples, by="content", root=root)
    assert by_content.names == ("Artistic depiction", "Photographic depiction")
    with pytest.raises(DataError, match="has no 'technique' column .*columns: id, material, content"):
        make_folds(samples, by="technique", root=root)
    with pytest.raises(DataError, match="merged fold 'other' .* has 3 source image"):
        make_folds(samples, by="material", root=root, min_images=4)


def test_images_without_a_value_always_train(tmp_path, caplog):
    root = _folder(tmp_path, ["Canvas"] * 4 + ["Paper"] * 4 + [""] * 2)
    samples = discover_pairs(root)[0]
    folds = make_folds(samples, by="material", root=root)
    assert folds.always_train == ("img008", "img009") and "never held out" in caplog.text
    for i in range(2):
        assert {"img008", "img009"} <= _groups(samples, folds.split(i).train)


def test_too_many_folds_and_bad_choices_are_named(tmp_path):
    samples = discover_pairs(_folder(tmp_path, ["Canvas"] * 4, copies=0))[0]
    with pytest.raises(DataError, match="data.cv.folds=5 needs at least 5 source images outside the test split"):
        make_folds(samples, folds=5)
    with pytest.raises(DataError, match="one of them"):
        make_folds(samples, folds=2, by="material", root=tmp_path)
    with pytest.raises(DataError, match="data.cv.fold=2: there are 2 folds"):
        make_folds(samples, folds=2).split(2)


def test_the_datamodule_writes_the_fold_to_split_json_and_the_summary(tmp_path):
    root = _folder(tmp_path / "data")
    runs = []
    for fold in range(3):
        dm = SegmentationDataModule(
            root, image_size=16, batch_size=4, cache=False, cv={"folds": 3, "fold": fold, "by": None}, test_fraction=0.1
        )
        dm.setup()
        runs.append(dm)
    splits = [dm.split for dm in runs]
    assert len({s["cv"]["partition_fingerprint"] for s in splits}) == 1
    assert len({s["fingerprint"] for s in splits}) == 3  # each run holds out another fold
    vals = [set(s["val"]) for s in splits]
    assert not (vals[0] & vals[1]) and not (vals[1] & vals[2]) and not (vals[0] & vals[2])
    assert all(s["test"] == splits[0]["test"] for s in splits)
    assert runs[1].describe()["cv"]["fold"] == 1
    originals = {s.id for s in runs[0].samples if not s.is_copy} - set(splits[0]["test"])
    assert set().union(*vals) == originals  # every image outside test is validated exactly once


def test_sweep_values_list_every_fold(tmp_path):
    from omegaconf import OmegaConf

    root = _folder(tmp_path)
    data = OmegaConf.create({"root": str(root), "cv": {"folds": None, "by": "material", "min_images": 3}})
    assert sweep_values(data) == "'Canvas','Glass','Paper','other'"
    data.cv.folds, data.cv.by = 4, None
    assert sweep_values(data) == "range(0,4)"
    counts = Counter(s.material for s in discover_pairs(root)[0] if not s.is_copy)
    assert counts["Canvas"] == 9

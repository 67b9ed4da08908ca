"""The built-in synthetic damage set: layout, determinism, copies, ARTeFACT-like difficulty, caching, CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from in_process import command
from poc59.core import publish
from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.data import synthetic
from poc59.data.sources import discover_pairs
from poc59.data.synthetic import (
    GENERATOR_VERSION,
    MARKER,
    ensure_synthetic,
    generate,
    render,
    writer,
)

SRC = Path(synthetic.__file__).resolve().parents[3]  # src/, holding poc59/data/synthetic/
DAMAGE = ARTEFACT.names[1:]
CLEAN = ARTEFACT.names.index("Clean")


def _id(name: str) -> int:
    return ARTEFACT.names.index(name)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    img = Image.open(root / "images" / f"{stem}.png")
    lab = Image.open(root / "annotations" / f"{stem}.png")
    assert img.mode == "RGB" and lab.mode == "L"
    return np.asarray(img), np.asarray(lab)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "set", n=4, seed=0)


@pytest.fixture(scope="module")
def rendered() -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """24 originals in memory (no PNG): enough for class statistics."""
    return [render(i, seed=0) for i in range(24)]


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_other_seed_differs(small_set, tmp_path):
    again = _files(generate(tmp_path / "again", n=4, seed=0, workers=1))  # threads must not matter
    assert again == _files(small_set)
    other = generate(tmp_path / "other", n=1, seed=1, aug_copies=0)
    assert (other / "images/syn00000.png").read_bytes() != again["images/syn00000.png"]
    assert (other / "annotations/syn00000.png").read_bytes() != again["annotations/syn00000.png"]


def test_image_i_does_not_depend_on_n(small_set, tmp_path):
    fewer = generate(tmp_path / "fewer", n=2, seed=0, aug_copies=1)
    for name in ("syn00001.png", "syn00001_aug1.png"):
        for sub in ("images", "annotations"):
            assert (fewer / sub / name).read_bytes() == (small_set / sub / name).read_bytes()


# -- layout ----------------------------------------------------------------------------------------


def test_layout_metadata_and_masks(small_set):
    stems = [f"syn{i:05d}{s}" for i in range(4) for s in ("", "_aug1", "_aug2", "_aug3")]
    assert sorted(p.stem for p in (small_set / "images").iterdir()) == stems
    assert sorted(p.stem for p in (small_set / "annotations").iterdir()) == stems
    with (small_set / "metadata.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "material", "content", "image_path", "annotation_path", "width", "height"]
        rows = list(reader)
    assert [r["id"] for r in rows] == stems
    saw_ignore = False
    for r in rows:
        assert r["material"] in synthetic.MATERIALS and r["content"] in synthetic.CONTENTS
        img, lab = _load(small_set, r["id"])
        assert r["image_path"] == f"images/{r['id']}.png" and (small_set / r["annotation_path"]).is_file()
        assert img.shape[:2] == lab.shape == (int(r["height"]), int(r["width"]))
        assert set(np.unique(lab).tolist()) <= set(range(16)) | {IGNORE_INDEX}
        saw_ignore |= bool((lab == IGNORE_INDEX).any())
    assert saw_ignore
    # the data layer reads it as 4 groups of 4, with materials from metadata.csv
    samples = discover_pairs(small_set)[0]
    assert len(samples) == 16 and len({s.group for s in samples}) == 4
    assert all(s.material in synthetic.MATERIALS for s in samples)


def test_sizes_non_square_with_a_mount(rendered):
    for _, lab, _, _ in rendered:
        h, w = lab.shape
        assert 300 <= h <= 800 and 300 <= w <= 800 and h != w
    outside = [np.mean(lab == IGNORE_INDEX) for _, lab, _, _ in rendered]
    assert sum(o > 0 for o in outside) >= len(rendered) // 2  # most objects sit on a mount
    assert max(outside) < 0.3  # a border, not half the picture


def test_copies_move_the_mask_with_the_image(small_set):
    for i in range(4):
        img, lab = _load(small_set, f"syn{i:05d}")
        img1, lab1 = _load(small_set, f"syn{i:05d}_aug1")
        flips = [ax for ax in (0, 1) if np.array_equal(lab1, np.flip(lab, ax))]
        assert flips and np.array_equal(img1, np.flip(img, flips[0]))
        img2, lab2 = _load(small_set, f"syn{i:05d}_aug2")
        turns = [
            k for k in (1, 2, 3) if lab2.shape == np.rot90(lab, k).shape and np.array_equal(lab2, np.rot90(lab, k))
        ]
        assert turns and np.array_equal(img2, np.rot90(img, turns[0]))
        img3, lab3 = _load(small_set, f"syn{i:05d}_aug3")
        assert np.array_equal(lab3, lab)  # colour change: same labels
        assert np.abs(img3.astype(int) - img).mean() > 5  # ... and visibly different colours


# -- difficulty: imbalance and no colour coding --------------------------------------------------------


def test_class_balance_like_artefact(rendered):
    counts = np.zeros(256, np.int64)
    types_per_image = []
    for _, lab, _, _ in rendered:
        c = np.bincount(lab.ravel(), minlength=256)
        counts += c
        types_per_image.append(int((c[1:16] > 0).sum()))
    frac = counts[:16] / counts[:16].sum()  # of labelled pixels: 255 is not a class
    assert 0.70 <= frac[CLEAN] <= 0.88, frac[CLEAN]
    missing = [name for name in DAMAGE if frac[_id(name)] == 0]
    assert not missing, f"damage types never drawn: {missing}"
    for name in ("Hair", "Dust", "Burn marks", "Puncture", "Scratch"):
        assert frac[_id(name)] < 0.01, (name, frac[_id(name)])
    by_size = sorted(DAMAGE, key=lambda name: -frac[_id(name)])
    assert set(by_size[:3]) == {"Material loss", "Peel", "Staining"}, by_size[:5]
    assert max(types_per_image) < 15  # not every image has every type
    assert min(types_per_image) >= 1


@pytest.mark.parametrize("name", ["Staining", "Peel", "Cracks", "Fold", "Dirt"])
def test_damage_colour_follows_the_artwork_not_a_code(rendered, name):
    k = _id(name)
    damage, clean = [], []
    for img, lab, _, _ in rendered:
        if (lab == k).sum() >= 20:
            damage.append(img[lab == k].mean(0))
            clean.append(img[lab == CLEAN].mean(0))
    assert len(damage) >= 4, f"{name} in too few images to judge"
    damage, clean = np.array(damage), np.array(clean)
    assert damage.std(0).mean() > 10  # a colour-coded class would have one colour everywhere
    assert np.corrcoef(damage.ravel(), clean.ravel())[0, 1] > 0.5  # it is tinted from its surroundings


# -- ensure_synthetic: caching, refusal, concurrency -----------------------------------------------------


def test_ensure_reuses_a_complete_set(tmp_path, monkeypatch):
    out = ensure_synthetic(tmp_path / "cache" / "set", n=1, seed=3, aug_copies=1)
    marker = (out / MARKER).read_text()
    assert f'"version": {GENERATOR_VERSION}' in marker and '"n": 1' in marker and '"seed": 3' in marker
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    monkeypatch.setattr(writer, "generate", lambda *a, **k: pytest.fail("regenerated a complete set"))
    assert ensure_synthetic(out, n=1, seed=3, aug_copies=1) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_ensure_replaces_its_own_set_made_with_other_parameters(tmp_path):
    out = ensure_synthetic(tmp_path / "set", n=1, seed=0, aug_copies=0)
    ensure_synthetic(out, n=2, seed=0, aug_copies=0)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["syn00000.png", "syn00001.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name != ".set.lock"] == ["set"]  # no leftovers


def test_ensure_refuses_a_foreign_folder_and_generate_refuses_non_empty(tmp_path):
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=MARKER):
        ensure_synthetic(out, n=1)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate(out, n=1)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate(empty, n=1, aug_copies=0) / MARKER).exists()  # an empty folder is fine


@pytest.mark.parametrize("locking", [True, False], ids=["lock", "rename-race"])
def test_concurrent_ensure_calls_agree(tmp_path, monkeypatch, locking):
    if not locking:  # e.g. a filesystem without locks: the loser of the rename uses the winner's set
        monkeypatch.setattr(publish, "lock", lambda target: nullcontext())
    out, results, errors = tmp_path / "set", [], []

    def call() -> None:
        try:
            results.append(ensure_synthetic(out, n=1, seed=0, aug_copies=0))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [out, out]
    assert (out / MARKER).exists() and len(list((out / "images").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# -- command line --------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "poc59.data.synthetic", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_writes_a_set(tmp_path):
    res = _cli(f"out={tmp_path / 'cli'}", "n=2", "seed=1", "aug=1")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "cli" / "annotations").iterdir()) == [
        "syn00000.png",
        "syn00000_aug1.png",
        "syn00001.png",
        "syn00001_aug1.png",
    ]
    assert (tmp_path / "cli" / "images" / "syn00001.png").read_bytes() == (
        generate(tmp_path / "lib", n=2, seed=1, aug_copies=0) / "images" / "syn00001.png"
    ).read_bytes()


def test_cli_bad_arguments_are_named(tmp_path, capsys, monkeypatch):
    # in-process (tests/in_process.py): test_cli_writes_a_set keeps the command's own process
    res = command("data.synthetic", [f"out={tmp_path / 'x'}", "size=3"], capsys, monkeypatch)
    assert res.returncode == 2 and "unknown argument 'size=3'" in res.stderr and "out, n, seed, aug" in res.stderr
    assert synthetic.main(["n=2"]) != 0  # missing out=
    assert synthetic.main([f"out={tmp_path / 'y'}", "n=two"]) != 0
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_generator_killed_while_writing_leaves_nothing_for_the_next_start(tmp_path):
    """A kill -9 mid-write leaves its temporary folder; the next generation of that set removes it (its pid
    no longer runs) and leaves a live writer's alone."""
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "set"
    leftover = tmp_path / f".set.tmp-{socket.gethostname()}-{gone.pid}.1"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images" / "syn00000.png").write_bytes(b"half a png")
    live = tmp_path / f".set.tmp-{socket.gethostname()}-{os.getpid()}.1"
    live.mkdir()
    ensure_synthetic(out, n=1, seed=0, aug_copies=0)
    assert (out / MARKER).exists() and not leftover.exists() and live.exists()

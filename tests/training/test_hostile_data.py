"""Bad data given to `python -m poc59.train`: exit 2, one message naming the file or split and the fix, no
traceback, and nothing of a run folder left behind to be mistaken for a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_cfg, make_folder, write_pair
from poc59.training.run import USER_ERRORS, train

TINY = ["encoder=tiny", "data=artefact", "data.image_size=32", "data.batch_size=2", "trainer.max_epochs=1"]


def _all_ignore(root: Path) -> Path:
    for i in range(5):
        write_pair(root, f"img{i}", np.full((32, 32, 3), 40 * i, np.uint8), np.full((32, 32), 255))
    return root


def _one_source_image(root: Path) -> Path:
    write_pair(root, "only", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32)))
    write_pair(root, "only_aug1", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32)))
    return root


def _bad_classes_json(root: Path) -> Path:
    make_folder(root, n=4, copies=0, size=(32, 32))
    (root / "classes.json").write_text('["Clean", "Crack",')  # cut short
    return root


def _binary_metadata(root: Path) -> Path:
    make_folder(root, n=4, copies=0, size=(32, 32))
    (root / "metadata.csv").write_bytes(bytes(range(256)) * 8)  # e.g. a spreadsheet saved as .xls, renamed
    return root


def _binary_0_255(root: Path) -> Path:
    """A binary segmentation tool's export: background 0, the object (a crack) saved as 255."""
    for i in range(6):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 * i : 4 * i + 3] = 255
        write_pair(root, f"crack{i}", np.full((32, 32, 3), 30 * i, np.uint8), mask)
    (root / "classes.json").write_text(json.dumps(["background", "crack"]))
    return root


CASES = {
    "binary masks stored as 0/255": (_binary_0_255, "looks like (the object saved as 255). If 255 marks the object"),
    "metadata.csv binary": (_binary_metadata, "metadata.csv is not UTF-8 text (line 2 holds byte 0x80)"),
    "masks with no labelled pixel": (_all_ignore, "has no labelled pixel: every pixel of its masks is 255"),
    "one source image": (_one_source_image, "needs at least 2 source images, found 1 (only;"),
    "classes.json not JSON": (_bad_classes_json, "classes.json: not valid JSON"),
}


def _contents(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_plain_message_with_exit_2(tmp_path, case):
    """Each refusal is one of the errors the command turns into exit 2 and its one message (train's library
    call here; the command's process in the test below), and leaves nothing of a run."""
    make, says = CASES[case]
    root = make(tmp_path / "data")
    before = _contents(root)
    with pytest.raises(USER_ERRORS) as refused:
        train(make_cfg(tmp_path, *TINY, f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"))
    said = " ".join(str(refused.value).split())  # what the command logs: `log.error("%s", err)`, then exit 2
    assert says in said and "Traceback" not in said
    run = tmp_path / "run"
    assert not (run / "summary.json").exists() and not (run / "checkpoints").exists()
    assert _contents(root) == before  # the user's data is read, never written


@pytest.mark.slow  # real train processes over each bad folder: 67 s at a load of 8-10
def test_bad_data_through_the_command_is_exit_2_and_one_message_on_stderr(tmp_path):
    make, says = CASES["classes.json not JSON"]
    root = make(tmp_path / "data")
    before = _contents(root)
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "poc59.train",
            *TINY,
            f"data.root={root}",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    said = " ".join(out.stderr.split())
    assert says in said and "Traceback" not in said
    assert not (run / "summary.json").exists() and not (run / "checkpoints").exists()
    assert _contents(root) == before


@pytest.mark.slow
def test_a_bug_exits_1_with_its_traceback_in_the_run_log(tmp_path):
    """The other side of exit 2: what is not the user's input is a bug, with its traceback kept."""
    import os

    run = tmp_path / "run"
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}
    args = [
        "encoder=tiny",
        "data.synthetic.n=6",
        "data.image_size=32",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "+callbacks.boom._target_=helpers.boom_callback",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "poc59.train", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 1, out.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "Traceback" in log and "PlantedBug: a planted bug" in log


@pytest.mark.slow  # two trainings in one train process: 100 s at a load of 10-12
def test_skipped_files_are_named_in_the_log_and_summary_on_a_cold_and_a_warm_start(tmp_path):
    """data.on_bad_file=skip through real runs sharing one cache: a pair whose image is cut short and an
    image without its mask are left out, and each run (the second from the warm cache) names both in its
    log and in summary.json. The two runs are one sweep (`-m seed=0,1`, run one after the other in one
    process): the second finds the cache the first wrote on disk, as a later command would."""
    root = make_folder(tmp_path / "data", n=6, copies=0, size=(32, 32))
    image = root / "images" / "img002.png"
    image.write_bytes(image.read_bytes()[:60])  # cut short: unreadable
    write_pair(tmp_path / "lone", "lone", np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32)))
    (tmp_path / "lone" / "images" / "lone.png").rename(root / "images" / "lone.png")  # no annotation
    sweep = tmp_path / "sweep"
    args = [*TINY, f"data.root={root}", "data.on_bad_file=skip", f"paths.cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run(
        [sys.executable, "-m", "poc59.train", "-m", *args, "seed=0,1", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for n, source in ((0, "decoded"), (1, "cache")):
        run = sweep / str(n)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["provenance"]["data"]["preload_source"] == source
        skipped = {f["id"]: f for f in summary["provenance"]["data"]["skipped_files"]}
        assert sorted(skipped) == ["img002", "lone"], skipped
        assert skipped["img002"]["image"] == str(image) and skipped["lone"]["mask"] == ""
        log = " ".join((run / "train.log").read_text().split())
        assert str(image) in log and "lone.png" in log
        assert summary["provenance"]["data"]["train_images"] + summary["provenance"]["data"]["val_images"] == 5


@pytest.mark.slow  # a train process: 54 s at a load of 10-12
def test_the_advice_for_masks_stored_as_0_255_trains_on_the_object_when_pasted(tmp_path):
    """The refusal's fix, copied from its message onto the same command line, trains on the crack class. The
    message is train's own (the command logs it and exits 2: the tests above); the pasted command runs for real."""
    root = _binary_0_255(tmp_path / "data")
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    with pytest.raises(USER_ERRORS) as refused:
        train(make_cfg(tmp_path / "refused", *TINY, f"data.root={root}", cache))
    said = str(refused.value)
    advice = [w.rstrip(",;") for w in said.split() if w.startswith("data.mask_remap=")]
    assert advice == ["data.mask_remap={255:1}"], said
    args = [*TINY, f"data.root={root}", cache, f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(
        [sys.executable, "-m", "poc59.train", *args, *advice], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = json.loads((tmp_path / "run" / "class_weights.json").read_text())
    assert weights["counts"][1] > 0 and weights["weights"][1] > weights["weights"][0]  # the crack is a class now

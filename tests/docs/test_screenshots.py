"""scripts/screenshots/all.py, the driver that makes the manual's pictures again from a real run: it makes
every picture it can from the run it is given (the session's tiny trained run here), never writes into that
run, and names each picture it could not make (a screenshot script not written yet) with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "screenshots" / "all.py"
MADE = ("training_curves", "evaluate_iou_bars", "predict_overlay")


def _drive(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DRIVER), *args], capture_output=True, text=True)


def _first_image(run: Path) -> Path:
    """The first image of the data folder the run trained on (its config.yaml's data.root)."""
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    return sorted((root / "images").iterdir())[0]


def test_a_picture_it_does_not_know_is_refused_before_anything(trained_run, tmp_path):
    out = tmp_path / "images"
    done = _drive(f"run_dir={trained_run}", "only=training_curves,not_a_picture", f"out={out}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "only=not_a_picture: not understood" in done.stderr
    assert not out.exists()


@pytest.mark.slow  # evaluate and predict in fresh processes: about 30 s on a 2-core CPU
def test_the_pictures_are_made_from_the_run_given(trained_run, tmp_path):
    first = _first_image(trained_run)
    out = tmp_path / "images"
    done = _drive(f"run_dir={trained_run}", f"only={','.join(MADE)}", f"out={out}", f"scan={first}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(out / f"{name}.png") for name in MADE]
    assert (out / "training_curves.png").read_bytes() == (trained_run / "training_curves.png").read_bytes()
    for name in MADE:
        with Image.open(out / f"{name}.png") as picture:
            assert picture.format == "PNG" and min(picture.size) > 64
    assert not (trained_run / "evaluation").exists()  # evaluate scored a copy (the fixture checks every file too)


def test_a_screenshot_script_not_written_yet_is_named_and_the_rest_made(trained_run, tmp_path):
    """A picture whose script is missing (`scripts=` an empty folder here) is named on stderr with exit 2; the
    picture asked for beside it is still written (the run's own training curves: no command needed)."""
    out, scripts = tmp_path / "images", tmp_path / "no_scripts"
    scripts.mkdir()
    done = _drive(
        f"run_dir={trained_run}", "only=training_curves,mirador", f"out={out}", f"scan={_first_image(trained_run)}",
        f"scripts={scripts}",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"not made: mirador: {scripts / 'mirador.py'} is not written yet" in done.stderr
    assert done.stdout.split() == [str(out / "training_curves.png")]

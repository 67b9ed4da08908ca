"""A training run whose stdout is a file (a SLURM log) logs one plain line per epoch and no progress bar."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import TINY_RUN

LINE = re.compile(
    r"Epoch (\d+) \((\d+) of 3\): train loss ([\d.]+), val loss ([\d.]+), val mIoU ([\d.]+) % "
    r"\(best ([\d.]+) % at epoch (\d+)\), ([\d.]+) images/s, elapsed \d+:\d\d:\d\d, about \d+:\d\d:\d\d left"
)


@pytest.mark.slow
def test_a_log_file_gives_one_epoch_line_per_epoch_and_no_bar(tmp_path):
    run_dir = tmp_path / "run"
    base = [o for o in TINY_RUN if not o.startswith(("trainer.enable_progress_bar", "callbacks.progress_bar"))]
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    with out.open("w") as stdout, err.open("w") as stderr:  # files, as sbatch gives a job: not a terminal
        done = subprocess.run(
            [sys.executable, "-m", "poc59.train", *base, "trainer.max_epochs=3", f"run_dir={run_dir}"],
            stdout=stdout, stderr=stderr, timeout=300,
        )  # fmt: skip
    log = err.read_text()
    assert done.returncode == 0, log[-3000:]
    lines = [LINE.search(line) for line in log.splitlines() if "Epoch " in line and " of 3)" in line]
    assert all(lines) and [int(m.group(1)) for m in lines] == [0, 1, 2]
    history = json.loads((run_dir / "summary.json").read_text())["history"]
    best = 0.0
    for m, h in zip(lines, history):
        assert float(m.group(5)) == round(100 * h["mIoU"], 2)
        best = max(best, h["mIoU"])
        assert float(m.group(6)) == round(100 * best, 2) and float(m.group(8)) > 0
    assert "stderr is not a terminal" in log
    assert "it/s" not in out.read_text() + log  # no progress bar fragments in the files


@pytest.mark.slow
def test_the_end_of_a_run_names_its_folder_and_the_commands_that_work_on_it(tmp_path):
    base = [*TINY_RUN, "trainer.max_epochs=2", "run_dir=outputs/runs/first"]
    done = subprocess.run(
        [sys.executable, "-m", "poc59.train", *base], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "runs" / "first"
    log = done.stderr
    assert f"Run folder: {run_dir} (training curves: training_curves.png)" in log
    assert f"python -m poc59.evaluate run_dir={run_dir}" in log and f"python -m poc59.export run_dir={run_dir}" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"python -m poc59.predict ckpt={summary['checkpoint']['best']} input=" in log
    ratio = summary["val/mIoU"] / summary["baseline_val/mIoU"]
    assert f"scores {ratio:.2f}x that" in log
    names, iou = summary["classes"]["names"], summary["val/IoU"]
    missed = next(line for line in log.splitlines() if "Missed (IoU 0): " in line).split("Missed (IoU 0): ")[1]
    assert missed == (", ".join(n for n in names[1:] if iou[n] == 0) or "none")  # in the class table's order
    assert (run_dir / "training_curves.png").stat().st_size > 0
    assert (tmp_path / "outputs" / "runs" / "latest").resolve() == run_dir.resolve()
    resume = next(line for line in log.splitlines() if "# resumes it" in line).split("#")[0].split()
    assert resume[:3] == ["python", "-m", "poc59.train"]
    again = subprocess.run(
        [sys.executable, *resume[1:], "trainer.max_epochs=3"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )  # the printed command, with one more epoch, continues the same run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stderr and "Epoch 2 (3 of 3)" in again.stderr
    assert [h["epoch"] for h in json.loads((run_dir / "summary.json").read_text())["history"]] == [0, 1, 2]

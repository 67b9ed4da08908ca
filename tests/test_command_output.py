"""What each command writes where, run as a user runs it (a fresh process, stdout and stderr to files).

stdout holds only results (tables, the paths a script reads); stderr holds log lines in one format
(poc59.core.logs.FORMAT; a line that does not start with it continues the line above, indented), without
what a user cannot act on: Lightning's tips and banners, poc59's own limit_* defaults, "Total FLOPs", and
"random initialisation" when a trained model is loaded. `-v` brings Lightning's notices back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_RUN, make_cfg, write_multirun
from poc59.core.logs import LINE

NOISE = ("💡", "GPU available", "TPU available", "limit_train_batches=1.0", "limit_val_batches=1.0", "Total FLOPs")
NOT_WHEN_LOADED = "random initialisation"
TRAIN = [*TINY_RUN, "trainer.max_epochs=2"]


def _run(args: list[str], tmp: Path, ok: int = 0) -> tuple[str, str]:
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    env = {**os.environ, "COLUMNS": "80", "POC59_VERBOSE": ""}  # what a SLURM job or a pipe gets
    with out.open("w") as o, err.open("w") as e:
        code = subprocess.run([sys.executable, "-m", *args], stdout=o, stderr=e, env=env, cwd=tmp).returncode
    stdout, stderr = out.read_text(), err.read_text()
    assert code == ok, f"{args} exited {code}:\n{stderr[-3000:]}"
    return stdout, stderr


def _log_lines_only(stderr: str) -> list[str]:
    """The log lines (each in the one format; continuation lines are indented), checked for noise."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing logged"
    odd = [line for line in lines if not LINE.match(line) and not line.startswith((" ", "\t"))]
    assert not odd, f"lines outside the log format: {odd[:5]}"
    noise = [line for line in lines if any(n in line for n in NOISE)]
    assert not noise, noise
    return lines


def _no_log_lines(stdout: str) -> None:
    assert not [line for line in stdout.splitlines() if LINE.match(line)], stdout[:2000]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, str]:
    """A tiny run, trained as job 0 of a sweep folder: (run folder, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("commands")
    sweep = tmp / "sweep"
    write_multirun(sweep, ["seed=0"])
    run = sweep / "0"
    stdout, stderr = _run(["poc59.train", *TRAIN, f"run_dir={run}"], tmp)
    return run, stdout, stderr


@pytest.mark.slow  # `trained` is a real `python -m poc59.train`: 136 s of set-up at a load of 8-10
def test_train_prints_the_run_folder_and_logs_plain_lines(trained):
    run, stdout, stderr = trained
    assert stdout == f"{run}\n"  # the one result a script reads
    lines = _log_lines_only(stderr)
    epochs = [line for line in lines if re.search(r"poc59\.train: Epoch \d+ \(\d+ of 2\): train loss", line)]
    assert len(epochs) == 2 and all("val mIoU" in e and "images/s" in e and "left" in e for e in epochs)
    assert any("Network: " in line and "random initialisation (encoder.weights=null)" in line for line in lines)
    assert (run / "train.log").read_text().splitlines()[0].split(" ")[2] in ("INFO", "WARNING")  # one format there too


@pytest.mark.slow
def test_training_as_a_library_prints_nothing_the_command_prints_the_folder(tmp_path, capsys):
    """stdout is the command's: train() returns its summary and leaves the printing to `python -m poc59.train`."""
    from poc59.training.run import train

    cfg = make_cfg(tmp_path, *TINY_RUN, "trainer.max_epochs=1", "threads=1")
    summary = train(cfg)
    assert capsys.readouterr().out == "" and summary["epochs_run"] == 1
    assert cfg.paths.run_dir == str(tmp_path / "run")  # the folder the command prints
    train(cfg)  # a rerun of the finished run: its summary as it was, and still nothing printed
    assert capsys.readouterr().out == ""


@pytest.mark.slow  # a real training process: 78 s at a load of 8-10
def test_verbose_brings_lightnings_notices_back(tmp_path):
    _, stderr = _run(["poc59.train", "-v", *TINY_RUN, "trainer.max_epochs=1", f"run_dir={tmp_path / 'v'}"], tmp_path)
    assert "GPU available" in stderr and "limit_val_batches=1.0" in stderr


@pytest.mark.slow  # a real prepare process over generated data: 52 s at a load of 8-10
def test_prepare_prints_its_report_on_stdout(tmp_path):
    stdout, stderr = _run(["poc59.prepare", *TINY_RUN], tmp_path)
    _no_log_lines(stdout)
    _log_lines_only(stderr)
    assert "Pixels per class" in stdout and "Images: 24 pairs" in stdout  # 6 originals, 3 stored copies each
    table = [line for line in stdout.splitlines() if "train pixels" in line]
    assert table and "train pixels" in table[0] and "val pixels" in table[0]  # the header on one line, not wrapped


@pytest.mark.slow
def test_evaluate_predict_export_compare_status_weights(trained, tmp_path):
    run, _, _ = trained
    commands = {
        "evaluate": (["poc59.evaluate", f"run_dir={run}", "pictures=false", "bootstrap.resamples=50"], "mIoU"),
        "compare": (["poc59.compare", f"runs=[{run}]", f"out={tmp_path / 'cmp'}", "evaluate=false"], "best val mIoU"),
        "sweep_status": (["poc59.sweep_status", f"sweep={run.parent}"], "finished"),
        "weights": (["poc59.weights", "path", "encoder=tiny"], os.environ["POC59_CACHE"]),
        "export": (["poc59.export", f"run_dir={run}", "format=torchscript", f"out={tmp_path / 'exp'}"], "parity"),
    }
    printed = {}
    for name, (args, expected) in commands.items():
        stdout, stderr = _run(args, tmp_path)
        _no_log_lines(stdout)
        assert expected in stdout, (name, stdout)
        lines = _log_lines_only(stderr) if stderr.strip() else []
        assert not [line for line in lines if NOT_WHEN_LOADED in line], (name, lines)
        printed[name] = stdout.splitlines()
    # the paths a script reads end the output, whole and one a line: evaluate's metrics.json, export's files
    assert printed["evaluate"][-1] == str(run / "evaluation" / "val" / "metrics.json")
    assert json.loads(Path(printed["evaluate"][-1]).read_text())["split"] == "val"
    assert printed["export"][-2:] == [str(tmp_path / "exp" / "model.pt"), str(tmp_path / "exp" / "model.card.json")]
    assert json.loads(Path(printed["export"][-1]).read_text())["files"] == {"torchscript": "model.pt"}


@pytest.mark.slow
def test_a_part_that_failed_is_exit_3_named_with_the_rest_done(trained, tmp_path):
    """Exit 3, neither a bug (1) nor the user's input (2): `evaluate sweep=` with one run whose checkpoint is
    damaged evaluates the other and names the failed one; `export` beyond its parity tolerance writes the
    files and names the format."""
    run, _, _ = trained
    sweep = tmp_path / "sweep"
    write_multirun(sweep, ["seed=0,1"])
    for n in ("0", "1"):
        shutil.copytree(run, sweep / n, ignore=shutil.ignore_patterns("evaluation", "export", "tensorboard", "csv"))
    (sweep / "1" / "checkpoints" / "best.ckpt").write_bytes(b"truncated")
    evaluate = ["poc59.evaluate", f"sweep={sweep}", "pictures=false", "bootstrap.resamples=20"]
    _, stderr = _run(evaluate, tmp_path, ok=3)
    counts = json.loads((sweep / "evaluation-val.json").read_text())["counts"]
    assert counts["evaluated"] == 1 and counts["failed"] == 1, counts
    assert str(sweep / "1") in " ".join(stderr.split())
    assert (sweep / "0" / "evaluation" / "val" / "metrics.json").is_file()
    out = tmp_path / "exported"
    _, stderr = _run(["poc59.export", f"run_dir={run}", "format=onnx", "tolerance=0", f"out={out}"], tmp_path, ok=3)
    assert "Parity beyond tolerance for onnx" in stderr and (out / "model.onnx").is_file()
    assert json.loads((out / "model.card.json").read_text())["parity"]["onnx"]["passed"] is False


@pytest.mark.slow
def test_predict_logs_each_image_and_prints_the_summary(trained, tmp_path):
    run, _, _ = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(96, 80), (70, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(scans / f"scan{i}.png")
    stdout, stderr = _run(
        ["poc59.predict", f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={scans}", f"output={tmp_path / 'o'}"],
        tmp_path,
    )
    _no_log_lines(stdout)
    assert "2 of 2 image(s) predicted into" in stdout and "scan0.png" in stdout
    lines = _log_lines_only(stderr)
    progress = [line for line in lines if "poc59.predict: predict: " in line]
    assert len(progress) == 2, lines
    assert re.search(
        r"predict: 1 of 2 images \(scan0\.png, 96 x 80 px, [\d.]+ s\); elapsed 0:00:\d\d, about", progress[0]
    )
    assert "predict: 2 of 2 images (scan1.png, 70 x 64 px" in progress[1] and "about 0:00:00 left" in progress[1]
    assert not [line for line in lines if NOT_WHEN_LOADED in line]


@pytest.mark.slow  # `trained` (a real training process) and a predict: 17 s at a load of 8-10
def test_long_steps_report_progress_in_files(trained, tmp_path, monkeypatch, caplog):
    """evaluate (passes, bootstrap), compare (runs read), prepare (the generator, the decode): their progress
    lines, here for every step (a real run logs at most every 10 s, and only for steps that take longer)."""
    from poc59 import compare, evaluate, prepare
    from poc59.core import progress

    run, _, _ = trained
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO)
    assert evaluate.main([f"run_dir={run}", "pictures=false", f"out={tmp_path / 'ev'}"]) == 0
    assert compare.main([f"runs=[{run}]", f"out={tmp_path / 'cmp'}", "evaluate=false"]) == 0
    assert prepare.main([*TINY_RUN, "data.synthetic.n=5"]) == 0  # a set not generated yet: made, then decoded
    said = caplog.messages
    for line in (
        r"evaluate: 1 of 1 batches; elapsed \d:\d\d:\d\d, about 0:00:00 left",
        r"bootstrap: 1000 of 1000 resamples; elapsed",
        rf"compare: reading runs: 1 of 1 runs \({re.escape(str(run))}\); elapsed",
        r"synthetic set: 5 of 5 originals; elapsed",
        r"preload: decoding: 20 of 20 pairs; elapsed",
    ):
        assert any(re.match(line, m) for m in said), (line, said)


@pytest.mark.slow
def test_a_sweep_ends_with_its_folder_on_stdout_and_the_commands_that_read_it(tmp_path):
    """Each job prints its run folder, the sweep its own folder last; the log names what to run next, and
    the command it names works pasted into a shell."""
    out = tmp_path / "out"
    stdout, stderr = _run(
        ["poc59.train", "-m", *TINY_RUN, "trainer.max_epochs=1", "seed=0,1", f"paths.output_dir={out}"], tmp_path
    )
    _no_log_lines(stdout)
    *runs, last = stdout.splitlines()
    sweep = Path(last)
    assert sweep.parent == out / "sweeps" and (sweep / "multirun.yaml").is_file()
    assert runs == [str(sweep / "0"), str(sweep / "1")]
    block = stderr.split(f"Sweep finished: {sweep}\nNext:\n", 1)[1].splitlines()
    status, compare = block[0].strip(), block[1].strip()
    assert compare == f"python -m poc59.compare sweep={sweep}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    shown = subprocess.run(["bash", "-c", status], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]

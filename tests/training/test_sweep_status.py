"""python -m poc59.sweep_status on hand-built sweep folders: finished, failed, running, pending."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from helpers import write_multirun
from poc59.data.sources import DataError
from poc59.sweep_status import main
from poc59.training.sweeps import sweep_status

ENCODERS = ["convnext_tiny", "segformer_b3", "maxvit_tiny", "tiny", "custom"]


_multirun = write_multirun


def _run_dir(sweep: Path, num: int, overrides: list[str], job_id: str | None = None) -> Path:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"name": "train", "num": num, "id": job_id or f"job_id_for_{num}"}}}
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (d / "train.log").write_text(f"[2026-01-01 10:00:00,000][poc59.train][INFO] - Run folder: {d}\n")
    return d


def _task(sweep: Path, job_id: str, err: str = "", result: tuple | None = None) -> Path:
    d = sweep / ".submitit" / job_id
    d.mkdir(parents=True)
    (d / f"{job_id}_submitted.pkl").write_bytes(b"not read")
    if err:
        (d / f"{job_id}_0_log.err").write_text(err)
        (d / f"{job_id}_0_log.out").write_text("")
    if result is not None:
        (d / f"{job_id}_0_result.pkl").write_bytes(cloudpickle.dumps(result))
    return d


def _summary(d: Path, encoder: str, miou: float, epochs: int = 3) -> None:
    summary = {
        "encoder": encoder,
        "decoder": "Unet",
        "val/mIoU": miou,
        "best_epoch": epochs - 1,
        "epochs_run": epochs,
        "wall_time_s": 12.5,
    }
    (d / "summary.json").write_text(json.dumps(summary))


def _job_return(overrides: list[str], status: JobStatus, value) -> JobReturn:
    ret = JobReturn(
        overrides=overrides,
        cfg=OmegaConf.create({"seed": 0}),
        hydra_cfg=OmegaConf.create({}),
        working_dir="/somewhere",
        task_name="train",
        status=status,
    )
    ret._return_value = value
    return ret


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A SLURM sweep of five encoders (array job 42): one of each state, two kinds of failure."""
    s = tmp_path / "outputs" / "sweeps" / "2026-01-01_10-00-00"
    _multirun(s, ["encoder=" + ",".join(ENCODERS), "trainer.max_epochs=3", "trainer.devices=1"])
    jobs = [[f"encoder={e}", "trainer.max_epochs=3", "trainer.devices=1"] for e in ENCODERS]
    started = "[2026-01-01 10:00:01,000][poc59.train][INFO] - Run folder: ...\n"
    # 0 finished
    d0 = _run_dir(s, 0, jobs[0], "42_0")
    _summary(d0, "tu-convnext_tiny", 0.4321)
    _task(s, "42_0", started, ("success", _job_return(jobs[0], JobStatus.COMPLETED, 0.4321)))
    # 1 failed inside the run: Hydra's JobReturn carries the exception (a poc59 class, not imported to read it)
    _run_dir(s, 1, jobs[1], "42_1")
    err = DataError("data.root=/nope: no images/ folder\nrun python -m poc59.train experiment=quickstart first")
    _task(s, "42_1", started, ("success", _job_return(jobs[1], JobStatus.FAILED, err)))
    # 2 running: started, no result, nothing says it ended
    _run_dir(s, 2, jobs[2], "42_2")
    _task(s, "42_2", started + "Epoch 1 ...\n")
    # 3 failed: SLURM killed it (time limit), so no result pickle; the log says so
    _run_dir(s, 3, jobs[3], "42_3")
    _task(
        s,
        "42_3",
        started
        + "Epoch 2 ...\nslurmstepd: error: *** JOB 45 ON node1 CANCELLED AT 2026-01-01T12:00:00 DUE TO TIME LIMIT ***\n",
    )
    # 4 pending: submitted, not started (no run folder, no log)
    _task(s, "42_4")
    (s / ".submitit" / "42").mkdir()  # the array's own folder (submission script only)
    (s / ".submitit" / "42" / "42_submission.sh").write_text("#!/bin/bash\n")
    return s


def test_each_state_is_told_apart(sweep):
    report = sweep_status(sweep, use_squeue=False)
    assert report["counts"] == {"finished": 1, "failed": 2, "running": 1, "pending": 1}
    jobs = {j["num"]: j for j in report["jobs"]}
    assert [jobs[n]["status"] for n in range(5)] == ["finished", "failed", "running", "failed", "pending"]

    done = jobs[0]
    assert done["encoder"] == "tu-convnext_tiny" and done["val/mIoU"] == pytest.approx(0.4321)
    assert done["epochs_run"] == 3 and done["best_epoch"] == 2 and done["job_id"] == "42_0"

    failed = jobs[1]
    assert failed["error"][0].startswith("DataError: data.root=/nope")
    assert failed["error"][-1] == "run python -m poc59.train experiment=quickstart first"
    assert "TIME LIMIT" in jobs[3]["error"][-1] and jobs[3]["log"].endswith("42_3_0_log.err")
    # the cause in one line: the exception's first line, SLURM's end line (what compare shows)
    assert failed["cause"] == "DataError: data.root=/nope: no images/ folder"
    assert jobs[3]["cause"].startswith("slurmstepd: error: *** JOB 45") and jobs[0]["cause"] is None

    assert jobs[2]["job_id"] == "42_2" and jobs[2]["dir"].endswith("/2")
    assert jobs[4]["job_id"] == "42_4" and jobs[4]["dir"] is None
    # only what varies between the runs is shown, and pending runs get theirs from multirun.yaml
    assert jobs[4]["overrides"] == ["encoder=custom"] and jobs[0]["overrides"] == ["encoder=convnext_tiny"]


def test_reading_results_imports_nothing_of_the_model(sweep):
    """The status tool answers in a moment: it never imports torch to read a result pickle."""
    code = (
        "import sys; from poc59.training.sweeps import sweep_status; "
        f"r = sweep_status({str(sweep)!r}, use_squeue=False); "
        "assert r['counts']['failed'] == 2, r; "
        "print('torch' in sys.modules, 'poc59.data.sources' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_launcher_error_shows_the_traceback_tail(tmp_path):
    s = tmp_path / "sweep"
    _multirun(s, ["encoder=tiny,custom"])
    _run_dir(s, 0, ["encoder=tiny"], "7_0")
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    boom()\nRuntimeError: CUDA out of memory'
    _task(s, "7_0", "log\n", ("error", tb))
    _task(s, "7_1")
    report = sweep_status(s, lines=2, use_squeue=False)
    jobs = report["jobs"]
    assert jobs[0]["status"] == "failed" and jobs[0]["error"] == ["    boom()", "RuntimeError: CUDA out of memory"]
    assert jobs[1]["status"] == "pending"


@pytest.mark.parametrize(
    "error_line",
    [
        "2026-01-01 10:00:02 ERROR poc59.train: Run failed",  # poc59.core.logs's format
        "[2026-01-01 10:00:02,000][poc59.train][ERROR] - Run failed",  # Hydra's default, in runs from before
    ],
)
def test_a_sweep_without_submitit(tmp_path, error_line):
    """Hydra's own launcher: runs one after another; an ERROR in train.log marks a failed run."""
    s = tmp_path / "sweep"
    _multirun(s, ["data.image_size=64,63,96"])
    d0 = _run_dir(s, 0, ["data.image_size=64"])
    _summary(d0, "tu-mobilenetv3_small_050", 0.12, epochs=1)
    d1 = _run_dir(s, 1, ["data.image_size=63"])
    with (d1 / "train.log").open("a") as f:
        f.write(
            f"{error_line}\nTraceback (most recent call last):\n"
            "ValueError: data.image_size=63 does not fit encoder tu-mobilenetv3_small_050\n"
        )
    report = sweep_status(s, use_squeue=False)
    assert [j["status"] for j in report["jobs"]] == ["finished", "failed", "pending"]
    assert report["jobs"][1]["error"][-1].startswith("ValueError: data.image_size=63")
    assert report["jobs"][1]["log"].endswith("train.log")


def test_half_written_summary_is_not_finished(tmp_path):
    s = tmp_path / "sweep"
    _multirun(s, ["seed=0,1"])
    d = _run_dir(s, 0, ["seed=0"])
    (d / "summary.json").write_text('{"encoder": "tu-')
    assert sweep_status(s, use_squeue=False)["jobs"][0]["status"] == "running"


def test_cli_json_and_table(sweep, capsys):
    assert main([f"sweep={sweep}", "json=true", "squeue=false"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sweep_dir"] == str(sweep) and report["counts"]["finished"] == 1
    assert {"num", "status", "encoder", "val/mIoU", "epochs_run", "error", "overrides", "job_id", "log"} <= set(
        report["jobs"][0]
    )

    # a folder of sweeps: the newest one; the table names the states and the errors' last lines
    assert main([f"sweep={sweep.parent}", "squeue=false"]) == 0
    out = capsys.readouterr().out
    for word in (
        "1 finished",
        "2 failed",
        "1 running",
        "1 pending",
        "43.21 %",
        "DataError: data.root=/nope",
        "TIME LIMIT",
        "#1 failed: DataError: data.root=/nope: no images/ folder",  # the cause heads the error's lines
    ):
        assert word in out, word


def test_not_a_sweep_says_so(tmp_path, caplog):
    assert main([f"sweep={tmp_path}"]) == 2
    assert "not a sweep folder" in caplog.text

"""A SLURM job requeued mid-run resumes from last.ckpt and runs each epoch once (real local cluster, no mocks).

Two ways a running job gets requeued, each with a tiny CPU run of 4 epochs, requeued as soon
as `last.ckpt` holds epoch >= 1:

- plain sbatch (`slurm/train.sbatch`): `scontrol requeue <job>`. SLURM stops the first attempt
  (SIGTERM, then SIGKILL) and starts the same batch script again; resume=auto continues from
  the run folder's `last.ckpt`.
- a Hydra sweep on SLURM (`python -m poc59.train -m hydra/launcher=slurm`): submitit's
  preemption signal, `scancel --signal=USR2 <job>`. submitit checkpoints its own job (the same
  Hydra run), requeues it, and the restarted run continues from `last.ckpt`.

SLURM holds a requeued job for `cred_expire` (AuthInfo, 120 s by default) before it may start
again ("Reason=BeginTime"). The tests read `last.ckpt` in that pause, between the two attempts,
then end the pause with `scontrol update JobId=<id> StartTime=now`.

The cluster is test_slurm.py's session fixture (the cluster of $SLURM_CONF when it is up, else
a private one from slurm/local/up.sh, stopped at the end).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import TINY_RUN
from slurm_cluster import REPO, Cluster

TINY = TINY_RUN
EPOCHS = 4


# ---------------------------------------------------------------- helpers


def _ckpt(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not there yet (checkpoints are written atomically: never half a file)
        return None


def _epoch_of(path: Path) -> int:
    ckpt = _ckpt(path)
    return -1 if ckpt is None else int(ckpt["epoch"])


def _in_queue(slurm: Cluster, job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=slurm.env, timeout=30
    )
    return bool(out.stdout.strip())


def _wait(what: str, until: Callable[[], bool], timeout: float, explain: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout:.0f} s\n{explain()}")
        time.sleep(0.2)


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else f"(no {path})"


def _run(cmd: list[str], slurm: Cluster) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=slurm.env, timeout=30)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"


@dataclass
class Requeued:
    job_id: str
    run_dir: Path
    log: Path  # every attempt's output, appended
    resumed_epoch: int  # last.ckpt between the attempts
    resumed_step: int
    seconds: float


def _requeue_after_epoch_1(
    slurm: Cluster, job_id: str, last: Path, requeue: list[str], explain: Callable[[], str], running: Callable[[], bool]
) -> tuple[int, int]:
    """Wait for last.ckpt at epoch >= 1, requeue the running job, read last.ckpt between the attempts, release it."""
    _wait(
        "last.ckpt at epoch >= 1 while the job runs",
        lambda: _epoch_of(last) >= 1 or not _in_queue(slurm, job_id) or not running(),
        180,
        explain,
    )
    assert slurm.job(job_id).get("JobState") == "RUNNING", "the job ended before it could be requeued\n" + explain()
    _run(requeue, slurm)
    _wait("the requeued job pending", lambda: slurm.job(job_id).get("JobState") == "PENDING", 60, explain)
    assert slurm.job(job_id).get("Restarts") == "1", explain()
    ckpt = _ckpt(last)  # the first attempt has ended: this is the state the second one starts from
    assert ckpt is not None, explain()
    epoch, step = int(ckpt["epoch"]), int(ckpt["global_step"])
    assert 1 <= epoch < EPOCHS - 1, f"last.ckpt holds epoch {epoch}: nothing left to resume\n" + explain()
    _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], slurm)  # skip SLURM's requeue delay
    return epoch, step


def _val_steps_by_attempt(run_dir: Path) -> list[list[int]]:
    """Global steps of the val/loss scalars in each TensorBoard event file (one file per attempt, oldest first)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3]))
    steps = []
    for f in files:
        events = EventAccumulator(str(f), size_guidance={"scalars": 0})
        events.Reload()
        steps.append([e.step for e in events.Scalars("val/loss")] if "val/loss" in events.Tags()["scalars"] else [])
    return steps


def _check_each_epoch_once(run: Requeued, second_attempt: str) -> None:
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == list(range(EPOCHS))  # none lost, none repeated
    assert summary["epochs_run"] == EPOCHS
    last = run.run_dir / "checkpoints" / "last.ckpt"
    assert re.search(r"Resuming from \S*/checkpoints/last\.ckpt", second_attempt), second_attempt[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in second_attempt, second_attempt[-3000:]
    # the second attempt trained to the end: its epoch line of the last epoch, then the end-of-run lines
    assert f"Epoch {EPOCHS - 1} ({EPOCHS} of {EPOCHS}): " in second_attempt, second_attempt[-3000:]
    assert "poc59.train: Best val/mIoU" in second_attempt, second_attempt[-3000:]
    # summary.json's history travels in the checkpoint, so it cannot show an epoch run twice. TensorBoard
    # can: each attempt writes its own event file. The second attempt validates exactly the epochs after
    # last.ckpt's. The first validated those up to last.ckpt's and at most the one it was stopped in: a stop
    # after that epoch's validation and before its last.ckpt (CI once hit it) makes it run again, as the
    # README says. (The first attempt's file may lack its last events, should SIGKILL come before a flush.)
    steps = _val_steps_by_attempt(run.run_dir)
    assert len(steps) == 2, steps
    per_epoch = run.resumed_step // (run.resumed_epoch + 1)
    assert len([s for s in steps[0] if s > run.resumed_step]) <= 1, (run.resumed_step, steps)
    assert all(s < run.resumed_step + per_epoch for s in steps[0]), (run.resumed_step, per_epoch, steps)
    assert len(steps[1]) == EPOCHS - 1 - run.resumed_epoch, (run.resumed_epoch, steps)
    assert all(s > run.resumed_step for s in steps[1]), (run.resumed_step, steps)
    assert not list(run.run_dir.glob("checkpoints/.*tmp"))


# ---------------------------------------------------------------- plain sbatch + scontrol requeue


@pytest.fixture(scope="module")
def sbatch_requeued(slurm, tmp_path_factory, private_cache) -> Requeued:
    """slurm/train.sbatch submitted as a user would, requeued with `scontrol requeue` after epoch 1, run to the end."""
    t0 = time.perf_counter()
    tmp = tmp_path_factory.mktemp("sbatch-requeue")
    outputs, run_name = tmp / "outputs", "requeue"
    run_dir = outputs / "runs" / run_name
    env = {
        **slurm.env,  # sbatch exports the whole environment to the job (--export=ALL)
        "POC59_CACHE": str(private_cache),
        "POC59_OUTPUTS": str(outputs),
        "RUN_NAME": run_name,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's python
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),  # this checkout
        "HF_HUB_OFFLINE": "1",
    }
    # Command-line options override train.sbatch's #SBATCH lines: no GPU on this cluster, one core, little memory.
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--partition={slurm.partition}",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--mem=2G",
            "--time=15",
            str(REPO / "slurm" / "train.sbatch"),
            *TINY,
            f"trainer.max_epochs={EPOCHS}",
            "trainer.accelerator=cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=60,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    log = run_dir / f"slurm-{job_id}.log"  # train.sbatch tees every attempt into the run folder
    explain = lambda: f"job {job_id}: {slurm.job(job_id)}\n---- {log}\n{_tail(log)}"  # noqa: E731
    try:
        epoch, step = _requeue_after_epoch_1(
            slurm,
            job_id,
            run_dir / "checkpoints" / "last.ckpt",
            ["scontrol", "requeue", job_id],
            explain,
            running=lambda: True,
        )
        assert not (run_dir / "summary.json").exists(), "the stopped attempt wrote a summary\n" + explain()
        _wait("the job finished", lambda: not _in_queue(slurm, job_id), 180, explain)
    finally:
        if _in_queue(slurm, job_id):
            subprocess.run(["scancel", job_id], env=slurm.env, timeout=30)
    assert (run_dir / "summary.json").exists(), "no summary.json\n" + explain()
    seconds = time.perf_counter() - t0
    print(f"\nsbatch job {job_id}: requeued at last.ckpt epoch {epoch}, finished after {seconds:.1f} s")
    return Requeued(job_id, run_dir, log, epoch, step, seconds)


@pytest.mark.slow
def test_requeued_sbatch_job_resumes_from_last_ckpt_and_runs_each_epoch_once(sbatch_requeued: Requeued):
    run = sbatch_requeued
    attempts = re.split(r"(?m)^(?=poc59 job \d+ \(restart \d+\))", run.log.read_text(errors="replace"))[1:]
    assert len(attempts) == 2, f"expected two attempts in {run.log}"
    first, second = attempts
    assert first.startswith(f"poc59 job {run.job_id} (restart 0)")
    assert second.startswith(f"poc59 job {run.job_id} (restart 1)")  # SLURM_RESTART_COUNT
    assert "Resuming from" not in first
    _check_each_epoch_once(run, second)


@pytest.mark.slow
def test_requeued_sbatch_job_ends_with_last_ckpt_at_the_final_epoch(sbatch_requeued: Requeued):
    # Lightning 2.6's save_last writes only when best.ckpt does; poc59's last_checkpoint callback writes every epoch.
    assert _epoch_of(sbatch_requeued.run_dir / "checkpoints" / "last.ckpt") == EPOCHS - 1


# ---------------------------------------------------------------- Hydra sweep on SLURM + submitit preemption


@pytest.mark.slow
def test_preempted_submitit_job_requeues_itself_and_resumes_from_last_ckpt(slurm, tmp_path, private_cache):
    t0 = time.perf_counter()
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    env = {
        **slurm.env,
        "POC59_CACHE": str(private_cache),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "poc59.train",
        "-m",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm.partition}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        f"trainer.max_epochs={EPOCHS}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "hydra.launcher.timeout_min=20",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
    ]
    launcher_err = tmp_path / "launcher.err"
    with open(launcher_err, "w") as err:
        launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
    job_dirs = lambda: [p for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]  # noqa: E731
    job_id = ""
    log = Path("/nonexistent")
    explain = lambda: (
        f"job {job_id}: {slurm.job(job_id) if job_id else None}\n---- {log}\n{_tail(log)}"  # noqa: E731
        f"\n---- launcher\n{_tail(launcher_err, 20)}"
    )
    try:
        _wait("the sweep's job submitted", lambda: bool(job_dirs()) or launcher.poll() is not None, 120, explain)
        assert job_dirs(), explain()
        job_id = job_dirs()[0].name
        log = (
            sweep / ".submitit" / job_id / f"{job_id}_0_log.err"
        )  # submitit appends every attempt (--open-mode=append)
        # submitit's preemption signal: it checkpoints its job (the same Hydra run) and requeues it itself
        epoch, step = _requeue_after_epoch_1(
            slurm,
            job_id,
            run_dir / "checkpoints" / "last.ckpt",
            ["scancel", "--signal=USR2", job_id],
            explain,
            running=lambda: launcher.poll() is None,
        )
        launcher.wait(timeout=180)  # the sweep returns once the second attempt has finished
    except subprocess.TimeoutExpired:
        pytest.fail("the sweep did not return after the requeued job\n" + explain())
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if job_id and _in_queue(slurm, job_id):
            subprocess.run(["scancel", job_id], env=slurm.env, timeout=30)
    seconds = time.perf_counter() - t0
    print(f"\nsubmitit job {job_id}: preempted at last.ckpt epoch {epoch}, sweep returned after {seconds:.1f} s")
    assert launcher.returncode == 0, explain()

    text = log.read_text(errors="replace")
    assert "this job is preempted" in text and f"Requeued job {job_id}" in text, text[-3000:]
    first, second = text.split(f"Requeued job {job_id}", 1)
    assert "Resuming from" not in first
    _check_each_epoch_once(Requeued(job_id, run_dir, log, epoch, step, seconds), second)

"""Sweeps on a real SLURM cluster: slurm/local/up.sh's single-node cluster (or the one CI started), no mocks.

The session fixture `slurm` (tests/slurm_cluster.py, through conftest.py) uses the cluster named by
$SLURM_CONF when `scontrol ping` says it is up (CI starts one with slurm/local/up.sh), else starts a
private one with slurm/local/up.sh and stops it with slurm/local/down.sh at the end. It skips only
where no cluster can run (not root, none given); under CI (CI=1) it fails instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from helpers import pooled_miou_by_hand
from in_process import command
from poc59.core.config import config_dir, gpus_per_node, register_resolvers
from slurm_cluster import UP, Cluster


def _launcher(*overrides: str) -> dict:
    """conf/hydra/launcher/* resolved as the launcher receives it."""
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


# ---------------------------------------------------------------- the launcher configs (no cluster needed)


def test_slurm_launcher_follows_the_trainer():
    gpu = _launcher(
        "hydra/launcher=slurm",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj1",
        "hydra.launcher.timeout_min=600",
    )
    assert (gpu["tasks_per_node"], gpu["gpus_per_node"], gpu["nodes"]) == (4, 4, 2)
    assert (gpu["partition"], gpu["account"], gpu["timeout_min"]) == ("gpu", "proj1", 600)
    assert "/.submitit/" in gpu["submitit_folder"] and gpu["max_num_timeout"] == 3
    cpu = _launcher("hydra/launcher=slurm", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"]) == (2, 0)


def test_slurm_launcher_refuses_devices_auto():
    with pytest.raises(Exception, match=r"integer device count.*trainer\.devices=N"):
        _launcher("hydra/launcher=slurm", "trainer.accelerator=gpu")  # trainer.devices is auto by default
    with pytest.raises(ValueError, match="trainer.devices"):
        gpus_per_node("gpu", [0, 1])
    with pytest.raises(ValueError, match="trainer.accelerator=gpu or trainer.accelerator=cpu"):
        gpus_per_node("mps", 1)
    assert gpus_per_node("cuda", "2") == 2


def test_local_launcher_gives_each_run_its_gpus():
    gpu = _launcher("hydra/launcher=local", "trainer.accelerator=gpu", "trainer.devices=1")
    assert gpu["_target_"].endswith("LocalLauncher") and gpu["gpus_per_node"] == 1 and gpu["tasks_per_node"] == 1
    assert gpu["setup"][0].startswith("n=1\n") and "flock" in gpu["setup"][0]
    assert _launcher("hydra/launcher=local", "trainer.accelerator=cpu", "trainer.devices=1")["gpus_per_node"] == 0
    ddp = _launcher("hydra/launcher=local", "trainer.accelerator=gpu", "trainer.devices=4")
    assert (ddp["tasks_per_node"], ddp["gpus_per_node"]) == (4, 4)  # one process per device, as SLURM starts them
    auto = _launcher("hydra/launcher=local", "trainer.devices=2")  # accelerator auto: this machine's GPUs, if any
    assert auto["gpus_per_node"] == (2 if torch.cuda.is_available() else 0)


@pytest.mark.slow
def test_local_launcher_runs_a_two_process_ddp_run(tmp_path):
    """Lightning would re-execute `python -m submitit.core._submit ...` for its second rank (submitit refuses
    the extra arguments); the local launcher starts one process per device instead, as SLURM does."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "poc59.train",
        "-m",
        "hydra/launcher=local",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "encoder=tiny",
        "data.synthetic.n=8",
        "data.image_size=32",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        "seed=0",  # one job: what is checked is its second rank (each job costs three fresh processes)
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its controllers and their tasks: nothing left running
        out, err = proc.communicate()
    tasks = "".join(f"\n--- {p.name}:\n{p.read_text()[-2000:]}" for p in sorted(sweep.glob(".submitit/*/*_log.err")))
    assert proc.returncode == 0, err[-3000:] + tasks
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["provenance"]["devices"] == 2 and summary["val/mIoU"] is not None


def test_a_failed_local_task_ends_its_siblings_instead_of_leaving_them_waiting(tmp_path):
    """submitit's local controller waits for every task, and submitit's tasks ignore SIGTERM: a rank that fails
    while the other waits for it (in DDP's start, a collective) left the job hanging for the DDP timeout."""
    import submitit

    def task() -> None:
        import os
        import time

        from poc59.training.distributed import stop_local_siblings

        if os.environ["SUBMITIT_LOCAL_LOCALID"] == "1":
            time.sleep(2)  # the sibling is waiting by now
            stop_local_siblings(grace_s=1.0)
            raise RuntimeError("rank 1 failed")
        time.sleep(300)  # rank 0, waiting for rank 1

    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    started = time.monotonic()
    job = executor.submit(task)
    while not job.done() and time.monotonic() - started < 120:
        time.sleep(0.5)
    assert job.done(), "rank 0 still runs: the failed rank left it waiting"
    assert time.monotonic() - started < 60
    log = (tmp_path / job.job_id / f"{job.job_id}_1_log.err").read_text()
    assert "rank 1 failed" in log and "Stopped the other processes of this run" in log


def test_local_launcher_tasks_follow_the_devices():
    from poc59.core.config import SettingError
    from poc59.training.distributed import adopt_submitit_local_ranks

    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
    }
    assert adopt_submitit_local_ranks(2, 1, env)
    assert (env["LOCAL_RANK"], env["NODE_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("1", "0", "2", "127.0.0.1")
    same_job = {**env, "SUBMITIT_LOCAL_LOCALID": "0"}
    adopt_submitit_local_ranks(2, 1, same_job)
    assert same_job["MASTER_PORT"] == env["MASTER_PORT"]  # every task of a job meets at one port
    with pytest.raises(SettingError, match=r"tasks_per_node=2.*leave hydra.launcher.tasks_per_node"):
        adopt_submitit_local_ranks(4, 1, dict(env))
    with pytest.raises(SettingError, match="trainer.num_nodes=1"):
        adopt_submitit_local_ranks(2, 2, dict(env))
    assert not adopt_submitit_local_ranks(1, 1, {"SUBMITIT_EXECUTOR": "slurm"})  # SLURM: Lightning reads SLURM's own


# ---------------------------------------------------------------- the real cluster


@pytest.mark.slow
def test_sbatch_runs_a_job(slurm, tmp_path):
    out_file = tmp_path / "out.txt"
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--partition={slurm.partition}",
            "--output",
            str(out_file),
            "--wrap",
            "echo hello from job $SLURM_JOB_ID",
        ],
        capture_output=True,
        text=True,
        env=slurm.env,
        timeout=60,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and f"hello from job {job_id}" not in (
        out_file.read_text() if out_file.exists() else ""
    ):
        time.sleep(0.5)
    assert out_file.read_text().strip() == f"hello from job {job_id}"


@pytest.mark.slow
def test_up_again_is_a_no_op(slurm):
    state = Path(slurm.env["SLURM_CONF"]).parent
    if not (state / "slurmctld.pid").exists():
        pytest.skip(f"the cluster of {slurm.env['SLURM_CONF']} was not started by slurm/local/up.sh")
    pids = {p.name: p.read_text() for p in state.glob("*.pid")}
    again = subprocess.run(["bash", str(UP), str(state)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stderr, again.stderr
    assert again.stdout.strip() == f"export SLURM_CONF={state / 'slurm.conf'}"
    assert {p.name: p.read_text() for p in state.glob("*.pid")} == pids  # the same daemons


@pytest.mark.slow
def test_accelerator_auto_asks_the_partition(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    assert gpus_per_node("auto", 2, slurm.partition) == 0  # this test cluster has no GPUs


TINY = (  # a tiny CPU run: ~5 s of training; SLURM starts one process per job
    "data.synthetic.n=6",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "hydra.launcher.timeout_min=20",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.array_parallelism=3",
)


def _sweep(slurm: Cluster, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m poc59.train -m hydra/launcher=slurm ...`, as a user runs it (jobs share the test's data cache);
    `overrides` replace TINY's value of a key they set."""
    keys = {o.split("=", 1)[0] for o in overrides}
    cmd = [
        sys.executable,
        "-m",
        "poc59.train",
        "-m",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm.partition}",
        f"hydra.sweep.dir={sweep_dir}",
        *(o for o in TINY if o.split("=", 1)[0] not in keys),
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=slurm.env, cwd=sweep_dir.parent, timeout=600)


def _status(slurm: Cluster, sweep_dir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "poc59.sweep_status", f"sweep={sweep_dir}", "json=true"],
        capture_output=True,
        text=True,
        env=slurm.env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


ENCODERS = [
    "tu-mobilenetv3_small_050",
    "tu-regnetx_002",
    "tu-resnet10t",
]  # three small timm CNNs standing in for three encoders


@pytest.mark.slow
def test_three_encoder_sweep_on_slurm(slurm, tmp_path, private_cache):
    sweep_dir = tmp_path / "sweep"
    t0 = time.perf_counter()
    run = _sweep(
        slurm,
        sweep_dir,
        "encoder=custom",
        "encoder.weights=null",
        "data.batch_size=4",
        "optimizer.lr=1e-3",
        "encoder.name=" + ",".join(ENCODERS),
    )
    print(f"\n3-job SLURM sweep: {time.perf_counter() - t0:.1f} s")
    assert run.returncode == 0, run.stderr[-4000:]

    summaries = [json.loads((sweep_dir / str(n) / "summary.json").read_text()) for n in range(3)]
    assert [s["encoder"] for s in summaries] == ENCODERS
    assert all(s["epochs_run"] == 1 and s["val/mIoU"] is not None for s in summaries)
    for n in range(3):
        assert (sweep_dir / str(n) / "checkpoints" / "last.ckpt").exists()
        assert (sweep_dir / str(n) / ".hydra" / "overrides.yaml").exists()
    # submitit's files sit inside the sweep folder, and the launcher's ${trainer.*} interpolations resolved
    scripts = list((sweep_dir / ".submitit").glob("*/*_submission.sh"))
    assert scripts, "no sbatch script in the sweep's .submitit folder"
    script = scripts[0].read_text()
    for line in (
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        f"--partition={slurm.partition}",
        "--array=0-2%3",
        "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK",
    ):
        assert line in script, line

    report = _status(slurm, sweep_dir)
    assert report["counts"] == {"finished": 3, "failed": 0, "running": 0, "pending": 0}
    assert [j["encoder"] for j in report["jobs"]] == ENCODERS
    assert [j["overrides"] for j in report["jobs"]] == [[f"encoder.name={e}"] for e in ENCODERS]


@pytest.mark.slow
def test_sweep_with_a_failing_job(slurm, tmp_path, private_cache):
    sweep_dir = tmp_path / "sweep"
    # one source image: a data error only the job finds (a bad setting is refused before submitting)
    run = _sweep(slurm, sweep_dir, "encoder=tiny", "data.synthetic.n=6,1")
    assert run.returncode != 0  # Hydra reports the failed job once all have ended
    assert "data.synthetic.n=1" in run.stderr, run.stderr[-4000:]

    assert (sweep_dir / "0" / "summary.json").exists() and not (sweep_dir / "1" / "summary.json").exists()
    report = _status(slurm, sweep_dir)
    assert report["counts"] == {"finished": 1, "failed": 1, "running": 0, "pending": 0}
    ok, bad = report["jobs"]
    assert ok["status"] == "finished" and ok["overrides"] == ["data.synthetic.n=6"]
    assert bad["status"] == "failed" and bad["overrides"] == ["data.synthetic.n=1"]
    error = "\n".join(bad["error"])
    assert "needs at least 2 source images, found 1" in error


@pytest.mark.slow
def test_cross_validation_sweep_on_slurm_is_pooled_by_compare(slurm, tmp_path, private_cache, capsys, monkeypatch):
    """experiment=cv through the SLURM launcher: one job per fold, then compare's pooled out-of-fold score
    (compare answered in this process: what is checked here is the sweep the jobs left, not compare's process)."""
    sweep_dir = tmp_path / "sweep"
    run = _sweep(slurm, sweep_dir, "experiment=cv", "data.cv.folds=3", "encoder=tiny", "data.synthetic.n=9")
    assert run.returncode == 0, run.stderr[-4000:]
    report = _status(slurm, sweep_dir)
    assert report["counts"] == {"finished": 3, "failed": 0, "running": 0, "pending": 0}
    assert [j["overrides"][0] for j in report["jobs"]] == [f"data.cv.fold={k}" for k in range(3)]
    compared = command("compare", [f"sweep={sweep_dir}"], capsys, monkeypatch)
    assert compared.returncode == 0, compared.stderr[-4000:]
    (config,) = json.loads((sweep_dir / "comparison" / "comparison.json").read_text())["configurations"]
    metrics = [sweep_dir / str(k) / "evaluation" / "val" / "metrics.json" for k in range(3)]
    assert config["folds"] == 3 and config["pooled_miou"] == pytest.approx(pooled_miou_by_hand(metrics), abs=1e-9)

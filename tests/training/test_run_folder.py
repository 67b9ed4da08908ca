"""The run folder as a hostile user meets it: copied, pointed at the user's own files, resumed backwards, used
by two trainings at once, read-only or full, and named with spaces. Each refusal exits 2, names the folder or
key and the fix, and changes nothing; each printed command works when pasted into a shell."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY_RUN
from in_process import command
from poc59.core import locks
from poc59.core.locks import LOCK_NAME
from poc59.training.distributed import first_process

NOT_EMPTY = "exists and is not empty"  # Lightning's warning on a resume, poc59's own (issue 35 item 4)


def _train(run_dir: Path | str, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "poc59.train", *TINY_RUN, f"run_dir={run_dir}", "threads=1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _shell_env() -> dict[str, str]:
    """This environment (the test's cache included), with this Python first on PATH: `python` in a pasted line."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _said(proc: subprocess.CompletedProcess) -> str:
    return " ".join(proc.stderr.split())


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run trained by the real command, for the tests that copy a run and resume the copy
    (or refuse to): each test copies it (cp -a, as a user copies a run) and never writes into it. Two epochs,
    so that a max_epochs of 1 is below them."""
    run_dir = tmp_path_factory.mktemp("runs") / "r1"
    first = _train(run_dir, "trainer.max_epochs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_copied_run_resumes_in_place_and_leaves_the_original_byte_identical(tmp_path, two_epochs):
    original, copy = two_epochs, tmp_path / "runs" / "r1copy"
    copy.parent.mkdir()
    before = _files(original)
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)

    resumed = _train(copy, "trainer.max_epochs=3")  # the README's resume command, with the copy's folder
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {copy / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert "dirpath" not in resumed.stderr and NOT_EMPTY not in resumed.stderr
    assert _files(original) == before  # not one byte of the original changed
    summary = json.loads((copy / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert summary["checkpoint"]["best"].startswith(str(copy / "checkpoints"))
    last = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    states = json.dumps({k: str(v) for k, v in last["callbacks"].items()})
    assert str(original) + os.sep not in states  # its checkpoint callbacks name the copy only
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (copy / LOCK_NAME).exists() and not (original / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_refused_naming_what_is_there_and_left_untouched(tmp_path, capsys, monkeypatch):
    """Refused before Hydra (so in this process, tests/in_process.py); the advised folder trains as a user
    runs it, in a process of its own."""
    data = tmp_path / "my dataset"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"not really a png")
    (data / "config.yaml").write_text("lr: 0.1\n")  # the user's own files
    (data / "split.json").write_text('{"train": ["a"]}\n')
    before = _files(data)

    refused = command("train", [*TINY_RUN, f"run_dir={data}", "threads=1", "trainer.max_epochs=1"], capsys, monkeypatch)
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = _said(refused)
    assert "Traceback" not in said and "not a poc59 run folder" in said
    assert all(name in said for name in ("config.yaml", "images/", "split.json"))
    assert _files(data) == before and sorted(p.name for p in data.iterdir()) == ["config.yaml", "images", "split.json"]

    advised = re.search(r"e\.g\. run_dir=(\S+)", said).group(1)  # the advice works as given
    assert not Path(advised).exists()
    followed = _train(Path(advised), "trainer.max_epochs=1")
    assert followed.returncode == 0, followed.stderr[-3000:]
    assert (Path(advised) / "summary.json").is_file() and _files(data) == before


@pytest.mark.slow
def test_max_epochs_below_a_runs_epochs_is_refused_before_anything_is_written(tmp_path, two_epochs):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(two_epochs), str(run_dir)], check=True)  # a copy resumes as its original
    before = _files(run_dir, skip=("train.log",))  # config.yaml, .hydra/, split.json, class_weights.json, csv/...

    refused = _train(run_dir, "trainer.max_epochs=1")
    assert refused.returncode == 2, refused.stderr[-3000:]
    said = _said(refused)
    assert "Traceback" not in said and "trainer.max_epochs=1 is below the 2 epochs" in said
    assert _files(run_dir, skip=("train.log",)) == before  # no new csv version either
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0"]

    advised = re.search(r"Pass (trainer\.max_epochs=\d+)", said).group(1)
    kept = _train(run_dir, advised)  # a documented resume, in place: no warning about the checkpoint folder
    assert kept.returncode == 0 and "already trained to the end" in kept.stderr, kept.stderr[-3000:]
    assert NOT_EMPTY not in kept.stderr


@pytest.mark.slow
def test_a_second_training_in_a_held_folder_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken(
    tmp_path, capsys, monkeypatch
):
    """The first training is a real process holding the lock; the second, refused before Hydra, answers in this
    process (tests/in_process.py); the take-over of a dead holder's lock is a real process again."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "poc59.train", *TINY_RUN, f"run_dir={run_dir}", "threads=1", "trainer.max_epochs=500"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            assert first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.2)
        held = json.loads((run_dir / LOCK_NAME).read_text())
        assert held["pid"] == first.pid
        records = _files(run_dir / ".hydra")

        second = command(
            "train", [*TINY_RUN, f"run_dir={run_dir}", "threads=1", "trainer.max_epochs=500"], capsys, monkeypatch
        )
        assert second.returncode == 2, second.stderr[-3000:]
        said = _said(second)
        assert f"pid {first.pid}" in said and held["host"] in said and "Traceback" not in said
        assert _files(run_dir / ".hydra") == records
        assert "is in use by another training" not in (run_dir / "train.log").read_text()  # the first's log alone
        assert first.poll() is None  # the first trains on
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock, as a node failure leaves it
        first.wait()
    assert (run_dir / LOCK_NAME).exists()
    done = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] + 1
    again = _train(run_dir, f"trainer.max_epochs={done + 1}")  # its holder is dead: taken over, the run goes on
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Took over" in again.stderr and "Resuming from" in again.stderr
    assert not (run_dir / LOCK_NAME).exists()


@pytest.fixture
def live_pid():
    """A process of this machine that runs for the whole test (the holder a lock written by hand names)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_start_refused_by_a_held_lock_writes_nothing_not_even_the_holders_log(
    tmp_path, live_pid, capsys, monkeypatch
):
    """Refused before Hydra opens <run>/train.log: the running training's log keeps only its own lines. (The
    command's main answering in this process, which must refuse before Hydra: tests/in_process.py.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("[2026-01-01 00:00:00][poc59.train][INFO] - Epoch 3 of the first training\n")
    holder = {"host": locks.socket.gethostname(), "pid": live_pid, "started": "2026-01-01 00:00:00"}
    holder |= {"boot": locks.boot_id(), "pid_started": locks.start_time(live_pid)}
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))
    before = _files(run_dir)

    second = command(
        "train", [*TINY_RUN, f"run_dir={run_dir}", "threads=1", "trainer.max_epochs=1"], capsys, monkeypatch
    )
    assert second.returncode == 2, second.stderr[-3000:]
    said = _said(second)
    assert f"pid {live_pid}" in said and f"kill {live_pid}" in said and "Traceback" not in said
    assert _files(run_dir) == before  # train.log included


@pytest.mark.slow
def test_a_resume_its_data_refuses_leaves_the_runs_hydra_records_as_they_were(tmp_path, two_epochs):
    """The data is checked (here: the run's split names an image the data no longer has) before any record of
    the start is written."""
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(two_epochs), str(run_dir)], check=True)
    split = json.loads((run_dir / "split.json").read_text())
    split["val"].append("no_such_image")
    del split["fingerprint"]  # a deliberate edit (poc59.data.split.from_dict), as a split of other data reads
    (run_dir / "split.json").write_text(json.dumps(split))
    before = _files(run_dir, skip=("train.log",))

    refused = _train(run_dir, "trainer.max_epochs=3")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "no_such_image" in _said(refused) and "Traceback" not in refused.stderr
    assert _files(run_dir, skip=("train.log",)) == before  # .hydra/config.yaml and overrides.yaml included


@pytest.mark.slow
def test_a_run_resumed_through_a_symlinked_folder_gives_no_checkpoint_folder_warning(tmp_path):
    """Its own training, not a copy of `two_epochs`: a copy's records name another folder, which would hide the
    symlink's path from the check."""
    real, link = tmp_path / "real" / "run", tmp_path / "link"
    first = _train(real, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    link.symlink_to(real, target_is_directory=True)
    resumed = _train(link, "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr and NOT_EMPTY not in resumed.stderr


def _in_own_mount(options: str, fill: bool, *train: str, mount: Path) -> subprocess.CompletedProcess:
    """`python -m poc59.train ...` in a private mount namespace where `mount` is a small tmpfs (`options`),
    filled up first when `fill`: a read-only or full file system, without touching the machine's. stdout
    ends with what the mount holds afterwards (`find`), after a line `--- left:`."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here: {probe.stderr.decode().strip()}")
    mount.mkdir(parents=True, exist_ok=True)
    fill_it = f" && (dd if=/dev/zero of={mount}/fill bs=4k 2>/dev/null; true)" if fill else ""
    cmd = [sys.executable, "-m", "poc59.train", *TINY_RUN, "threads=1", *train]
    script = (
        f"mount -t tmpfs -o {options} tmpfs {mount}{fill_it} || exit 99; {shlex.join(cmd)}; rc=$?; "
        f"echo '--- left:'; cd {mount} && find . -mindepth 1 | sort; exit $rc"
    )
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("options, fill", [("ro,size=1m", False), ("size=256k", True)], ids=["read-only", "full"])
def test_a_read_only_or_full_run_folder_is_refused_naming_it(tmp_path, options, fill):
    mount = tmp_path / "mnt"
    run_dir = mount / "run"
    out = _in_own_mount(options, fill, f"run_dir={run_dir}", "trainer.max_epochs=1", mount=mount)
    assert out.returncode == 2, out.stderr[-3000:]
    said = _said(out)
    assert f"run_dir={run_dir}: cannot write there" in said and "Traceback" not in said
    assert out.stdout.split("--- left:\n", 1)[1].split() == (["./fill"] if fill else [])  # nothing written


@pytest.mark.slow
def test_a_run_folder_that_fills_up_while_training_stops_with_exit_2_and_no_partial_file(tmp_path):
    """2 MB: the run's records fit, its first checkpoint (about 7 MB) does not."""
    mount = tmp_path / "mnt"
    run_dir = mount / "run"
    out = _in_own_mount("size=2m", False, f"run_dir={run_dir}", "trainer.max_epochs=1", mount=mount)
    assert out.returncode == 2, out.stderr[-3000:]
    said = _said(out)
    assert f"run_dir={run_dir}: cannot write there" in said and "No space left" in said and "Traceback" not in said
    left = out.stdout.split("--- left:\n", 1)[1].split()
    assert "./run/config.yaml" in left and not [f for f in left if f.endswith(".tmp") or f.endswith(".ckpt")], left
    assert "./run/.poc59.lock" not in left  # released on the way out


@pytest.mark.slow
def test_the_next_commands_work_pasted_into_a_shell_with_spaces_and_accents_in_the_path(tmp_path):
    """A path with a space and non-ASCII, and a key given twice: the printed commands run as printed (bash),
    and the resume command names each key once, with the value that was used."""
    run_dir = tmp_path / "my runs" / "élan 1"
    first = _train(f'"{run_dir}"', "trainer.max_epochs=2", "trainer.max_epochs=1")  # Hydra's quotes, as a user types
    assert first.returncode == 0, first.stderr[-3000:]
    block = first.stderr.split("Next:\n", 1)[1]
    commands = [line.strip() for line in block.splitlines()[:4]]
    again = commands[3].split("   # ", 1)[0]
    assert again.count("trainer.max_epochs=") == 1 and "trainer.max_epochs=1" in again
    resumed = subprocess.run(["bash", "-c", again], capture_output=True, text=True, timeout=300, env=_shell_env())
    assert resumed.returncode == 0 and "already trained to the end" in resumed.stderr, resumed.stderr[-3000:]
    assert resumed.stdout.strip() == str(run_dir)
    hint = resumed.stderr.split("Next:\n", 1)
    assert len(hint) == 1 or hint[1].count("trainer.max_epochs=") == 1
    evaluated = subprocess.run(
        ["bash", "-c", commands[0]], capture_output=True, text=True, timeout=300, env=_shell_env()
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert str(run_dir) in evaluated.stdout


def test_only_the_first_process_of_a_run_holds_its_lock():
    """Every rank of one run starts train(); the launchers' rank variables say which one is the first."""
    assert first_process({}) and first_process({"SLURM_PROCID": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"})
    for other in ({"LOCAL_RANK": "1"}, {"SLURM_PROCID": "3"}, {"RANK": "2"}, {"LOCAL_RANK": "0", "NODE_RANK": "1"}):
        assert not first_process(other), other


def test_only_the_first_process_checks_the_folder_the_others_start_while_it_writes(tmp_path, monkeypatch):
    """Rank 1 plans its run folder while rank 0 writes the run's records into it: caught between the first entry
    (`.hydra/`) and the file that makes it a run (`.hydra/config.yaml`), it took the folder for the user's own
    and exited 2, leaving rank 0 waiting for it in DDP's start for 30 minutes. The first process checks it."""
    from hydra import compose, initialize_config_dir

    from poc59.core.config import config_dir, register_resolvers
    from poc59.training import resume

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / ".config.yaml.tmp").write_text("seed: 0\n")  # rank 0's atomic write, not yet renamed
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}"])
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resume.plan(cfg, run_dir) == (run_dir, None)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(resume.ResumeConfigError, match=r"not a poc59 run folder and is not empty \(\.hydra/\)"):
        resume.plan(cfg, run_dir)

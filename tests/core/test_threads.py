"""PyTorch's CPU threads follow the CPUs a job may use: SLURM's allocation, a cgroup quota, the affinity mask."""

from __future__ import annotations

import os

import pytest
import torch

from poc59.core.config import SettingError
from poc59.core.threads import available_cpus, set_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_smallest_bound_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    none = tmp_path / "none"
    assert available_cpus({}, none) == (8, "the CPU affinity mask")
    assert available_cpus({"SLURM_CPUS_PER_TASK": "3"}, none) == (3, "SLURM_CPUS_PER_TASK")
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs of quota: 2 threads
    assert available_cpus({}, quota) == (2, f"the cgroup CPU quota ({quota})")
    assert available_cpus({"SLURM_CPUS_PER_TASK": "1"}, quota)[0] == 1
    quota.write_text("max 100000\n")  # no quota
    assert available_cpus({"SLURM_CPUS_PER_TASK": "junk"}, quota) == (8, "the CPU affinity mask")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})  # pinned to one core (taskset -c 5)
    assert available_cpus({"SLURM_CPUS_PER_TASK": "4"}, none) == (1, "the CPU affinity mask")


def test_set_threads_sets_and_logs_the_choice(monkeypatch, caplog, restore_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # not the test worker's own CPUs
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    caplog.set_level("INFO")
    assert set_threads("auto") == 1 == torch.get_num_threads()
    assert "CPU threads: 1 (1 CPUs available (SLURM_CPUS_PER_TASK)" in caplog.text
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert set_threads("auto", processes=2) == 2  # two CPU DDP processes share the job's four CPUs
    assert set_threads(3) == 3 == torch.get_num_threads()
    for bad in (0, "many", True):
        with pytest.raises(SettingError, match="threads="):
            set_threads(bad)


def _stat(path, cpus: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat with cpuN lines of (idle, busy) jiffies."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (idle, busy) in cpus.items()]
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_busy_cpus_are_those_other_work_keeps_less_than_half_idle(tmp_path, monkeypatch):
    from poc59.core import threads

    stat = tmp_path / "stat"
    _stat(stat, {0: (100, 100), 1: (100, 100), 2: (100, 100)})
    # while poc59 sleeps: cpu0 90 % idle, cpu1 10 % idle (another job), cpu2 50 % idle (the bound: not busy)
    monkeypatch.setattr(threads.time, "sleep", lambda s: _stat(stat, {0: (190, 110), 1: (110, 190), 2: (150, 150)}))
    assert threads.busy_cpus({0, 1, 2}, stat=stat) == 1
    assert threads.busy_cpus({0, 2}, stat=stat) == 0  # only the CPUs this process may run on count
    assert threads.busy_cpus({0, 1}, stat=tmp_path / "missing") == 0  # unreadable: nothing is assumed busy


def test_auto_leaves_out_busy_cpus_but_not_for_ddp_ranks(monkeypatch, caplog, restore_threads):
    from poc59.core import threads

    caplog.set_level("INFO")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus: 1)  # the measured case: another job on one core
    assert set_threads("auto") == 1 == torch.get_num_threads()
    assert "1 of the 2 it may run on busy with other work" in caplog.text
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus: 2)  # every CPU busy: still one thread
    assert set_threads("auto") == 1
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus: 0)
    assert set_threads("auto") == 2
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank: the other ranks are busy, and they share by division
    assert set_threads("auto") == 2
    assert set_threads(2) == 2  # threads=N is N, busy or not

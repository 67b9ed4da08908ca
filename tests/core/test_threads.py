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
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    caplog.set_level("INFO")
    assert set_threads("auto") == 1 == torch.get_num_threads()
    assert "CPU threads: 1 (1 CPUs available (SLURM_CPUS_PER_TASK)" in caplog.text
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert set_threads("auto", processes=2) == 2  # two CPU DDP processes share the job's four CPUs
    assert set_threads(3) == 3 == torch.get_num_threads()
    for bad in (0, "many", True):
        with pytest.raises(SettingError, match="threads="):
            set_threads(bad)

"""How many CPU threads PyTorch uses: the CPUs this process may use, not the machine's cores.

PyTorch starts one intra-op thread per core it sees (`os.cpu_count()`), whatever the job was given. A
SLURM job with `--cpus-per-task=4` on a 64-core node, a container with a CPU quota, or a process pinned
to two cores then runs 64 threads on 4 CPUs, and every step waits on the slowest. `available_cpus` is
the smallest of what bounds this process: `SLURM_CPUS_PER_TASK`, the cgroup v2 quota (`cpu.max`,
rounded up), and the affinity mask (`os.sched_getaffinity`).

`threads=auto` then leaves out the CPUs that other work keeps busy when the command starts (less than
half idle over a quarter of a second, from /proc/stat): measured on a 2-core machine (bench/threads.py,
2026-12-03), 2 threads trained 1.4x faster than 1 on a quiet machine but 7x slower while another job
kept one core busy, as every step waits on the thread that shares its core. `threads=N` sets N. The
count is logged and kept in summary.json; results are reproducible at one count (the float summation
order follows it), so a run resumed or compared bit for bit names it: `threads=N`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from poc59.core.config import SettingError

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")
BUSY_BELOW_IDLE = 0.5  # a CPU less idle than this while poc59 waits is taken by other work
SAMPLE_S = 0.25


def _cgroup_quota(path: Path) -> int | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def available_cpus(env: Mapping[str, str] | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> tuple[int, str]:
    """(CPUs this process may use, what said so), the smallest bound of the module docstring."""
    env = os.environ if env is None else env
    bounds: list[tuple[int, str]] = []
    if hasattr(os, "sched_getaffinity"):
        bounds.append((len(os.sched_getaffinity(0)), "the CPU affinity mask"))
    else:
        bounds.append((os.cpu_count() or 1, "the CPU count"))
    quota = _cgroup_quota(cpu_max)
    if quota is not None:
        bounds.append((quota, f"the cgroup CPU quota ({cpu_max})"))
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        bounds.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    return min(bounds, key=lambda b: b[0])


def _cpu_times(stat: Path) -> dict[int, tuple[int, int]]:
    """{cpu: (idle + iowait, all) jiffies} from /proc/stat's cpuN lines; {} where it cannot be read."""
    times = {}
    try:
        for line in stat.read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(f) for f in fields[:8]]
                times[int(name[3:])] = (values[3] + values[4], sum(values))
    except (OSError, ValueError, IndexError):
        return {}
    return times


def busy_cpus(cpus: Iterable[int], seconds: float = SAMPLE_S, stat: Path = PROC_STAT) -> int:
    """How many of `cpus` other work keeps busy: less than BUSY_BELOW_IDLE idle over `seconds` while this
    process sleeps (0 where /proc/stat cannot be read: nothing is assumed busy)."""
    before = _cpu_times(stat)
    time.sleep(seconds)
    after = _cpu_times(stat)
    busy = 0
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            idle = (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1])
            busy += idle < BUSY_BELOW_IDLE
    return busy


def _one_process_per_node(env: Mapping[str, str]) -> bool:
    """Whether this is the only poc59 process on the node (not a DDP rank beside others, which are busy)."""
    tasks = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
    return "LOCAL_RANK" not in env and (not tasks.isdigit() or int(tasks) <= 1)


def set_threads(setting: int | str | None, processes: int = 1) -> int:
    """Set PyTorch's intra-op threads from `threads` (auto or N) and log the choice; `processes` on this
    node (CPU DDP) share the available CPUs. Returns the count set."""
    if setting is None or str(setting).lower() == "auto":
        cpus, why = available_cpus()
        reason = f"{cpus} CPUs available ({why})"
        usable = cpus
        if processes <= 1 and _one_process_per_node(os.environ) and hasattr(os, "sched_getaffinity"):
            mask = os.sched_getaffinity(0)
            busy = busy_cpus(mask)
            usable = max(1, min(cpus, len(mask) - busy))
            if usable < cpus:
                reason += f"; {busy} of the {len(mask)} it may run on busy with other work"
        n = max(1, usable // max(1, processes))
        reason += f", shared by {processes} processes" if processes > 1 else ""
    else:
        try:
            n = int(setting)
        except (TypeError, ValueError):
            n = 0
        if isinstance(setting, bool) or n < 1:
            raise SettingError(f"threads={setting}: choose auto or a whole number of CPU threads, at least 1") from None
        reason = "threads= setting"
    torch.set_num_threads(n)
    log.info("CPU threads: %d (%s; threads=N to change)", n, reason)
    return n

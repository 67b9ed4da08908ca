"""How many CPU threads PyTorch uses: the CPUs this process may use, not the machine's cores.

PyTorch starts one intra-op thread per core it sees (`os.cpu_count()`), whatever the job was given. A
SLURM job with `--cpus-per-task=4` on a 64-core node, a container with a CPU quota, or a process pinned
to two cores then runs 64 threads on 4 CPUs, and every step waits on the slowest. `available_cpus` is
the smallest of what bounds this process: `SLURM_CPUS_PER_TASK`, the cgroup v2 quota (`cpu.max`,
rounded up), and the affinity mask (`os.sched_getaffinity`). `threads=N` in a command's settings
overrides it; `threads=auto` uses it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from poc59.core.config import SettingError

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


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


def set_threads(setting: int | str | None, processes: int = 1) -> int:
    """Set PyTorch's intra-op threads from `threads` (auto or N) and log the choice; `processes` on this
    node (CPU DDP) share the available CPUs. Returns the count set."""
    if setting is None or str(setting).lower() == "auto":
        cpus, why = available_cpus()
        n = max(1, cpus // max(1, processes))
        reason = f"{cpus} CPUs available ({why})" + (f", shared by {processes} processes" if processes > 1 else "")
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

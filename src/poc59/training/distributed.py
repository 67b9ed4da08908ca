"""How the processes of one multi-device run find each other when a launcher, not Lightning, starts them.

Under hydra-submitit-launcher every process of a run is started by the launcher (SLURM's srun, or the
local executor's controller), one per device, as `python -m submitit.core._submit ...`. Lightning must not
start more: it would re-execute that command with its own arguments, which submitit refuses, and every rank
would die. SLURM's processes are recognised by Lightning's SLURMEnvironment; the local executor's are not,
so `adopt_submitit_local_ranks` turns its variables into the ones Lightning's default environment reads
(LOCAL_RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which makes Lightning take the processes
as given.
"""

from __future__ import annotations

import logging
import os
import zlib

import psutil

from poc59.core.config import SettingError

log = logging.getLogger(__name__)

PORT_BASE, PORT_SPAN = 20000, 12768  # the rendezvous port of a local job: from its id, the same in all its tasks,
# below Linux's ephemeral ports (32768-60999), which the gloo connections of other runs take


def adopt_submitit_local_ranks(devices: object, num_nodes: object = 1, environ: dict[str, str] | None = None) -> bool:
    """Under submitit's local executor with several tasks, set Lightning's rank variables; True if it did.

    `devices` / `num_nodes` are trainer.devices / trainer.num_nodes: the tasks must be one per device on one
    node (conf/hydra/launcher/local.yaml makes tasks_per_node follow trainer.devices), or it is a SettingError.
    """
    env = os.environ if environ is None else environ
    if env.get("SUBMITIT_EXECUTOR") != "local":
        return False
    tasks = int(env.get("SUBMITIT_LOCAL_NTASKS", "1"))
    wanted = devices if isinstance(devices, int) else None
    if str(num_nodes) != "1":
        raise SettingError(
            f"trainer.num_nodes={num_nodes}: hydra/launcher=local runs on this machine only; use trainer.num_nodes=1 or hydra/launcher=slurm"
        )
    if wanted is not None and wanted > 1 and tasks != wanted:
        raise SettingError(
            f"trainer.devices={wanted} but hydra.launcher.tasks_per_node={tasks}: the local launcher must start one "
            f"process per device; leave hydra.launcher.tasks_per_node at its default (${{trainer.devices}})"
        )
    if tasks == 1:
        return False
    rank = env["SUBMITIT_LOCAL_LOCALID"]
    port = PORT_BASE + zlib.crc32(env["SUBMITIT_LOCAL_JOB_ID"].encode()) % PORT_SPAN
    env.update(LOCAL_RANK=rank, NODE_RANK="0", WORLD_SIZE=str(tasks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log.info("Local launcher: process %s of %d (rendezvous 127.0.0.1:%d)", rank, tasks, port)
    return True


SIBLING_GRACE_S = 10.0  # how long a failed task lets its siblings end on their own (and record their error)


def stop_local_siblings(environ: dict[str, str] | None = None, grace_s: float = SIBLING_GRACE_S) -> list[int]:
    """Under submitit's local executor with several tasks, end the other tasks of this job when this one fails;
    returns the pids it had to kill.

    The executor's controller waits for every task, and a rank waiting for a failed one in a collective (or
    in the process group's start) waits out the DDP timeout, 30 minutes, deaf to SIGTERM (submitit's tasks
    ignore it; a blocked collective would not see it). So a failed task gives its siblings `grace_s` to end on
    their own, which keeps their own error message when they fail for the same cause, then kills the rest, as
    `srun --kill-on-bad-exit` does on SLURM.
    """
    env = os.environ if environ is None else environ
    if env.get("SUBMITIT_EXECUTOR") != "local" or int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return []
    try:
        siblings = [p for p in psutil.Process(os.getppid()).children() if p.pid != os.getpid()]
    except psutil.Error:  # the controller is gone: nothing waits for this job
        return []
    _, alive = psutil.wait_procs(siblings, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    if alive:
        log.error(
            "Stopped the other processes of this run (pids %s): they would wait for this one", [p.pid for p in alive]
        )
    return [p.pid for p in alive]


RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def first_process(environ: dict[str, str] | None = None) -> bool:
    """Whether this is the first process of its run (global rank 0), from the variables the launchers set
    before Lightning starts: torchrun (RANK, GROUP_RANK), SLURM (SLURM_PROCID), Lightning's own launcher and
    `adopt_submitit_local_ranks` (LOCAL_RANK, NODE_RANK). A process none of them names is the only one."""
    env = os.environ if environ is None else environ
    return all(env.get(k, "0").strip() in ("", "0") for k in RANK_VARIABLES)

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

from poc59.core.config import SettingError

log = logging.getLogger(__name__)

PORT_BASE, PORT_SPAN = 20000, 20000  # the rendezvous port of a local job: from its id, the same in all its tasks


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


RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def first_process(environ: dict[str, str] | None = None) -> bool:
    """Whether this is the first process of its run (global rank 0), from the variables the launchers set
    before Lightning starts: torchrun (RANK, GROUP_RANK), SLURM (SLURM_PROCID), Lightning's own launcher and
    `adopt_submitit_local_ranks` (LOCAL_RANK, NODE_RANK). A process none of them names is the only one."""
    env = os.environ if environ is None else environ
    return all(env.get(k, "0").strip() in ("", "0") for k in RANK_VARIABLES)

"""The real single-node SLURM cluster the SLURM tests submit to (the `slurm` session fixture, see conftest.py).

It uses the cluster named by $SLURM_CONF when `scontrol ping` says it is up (CI starts one with
slurm/local/up.sh), else starts a private one with slurm/local/up.sh and stops it with slurm/local/down.sh
at the end. It skips only where no cluster can run (not root, none given); under CI (CI=1) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UP, DOWN = REPO / "slurm" / "local" / "up.sh", REPO / "slurm" / "local" / "down.sh"


@dataclass
class Cluster:
    env: dict  # os.environ plus SLURM_CONF
    partition: str
    started_here: bool

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict ({} once the job has left the controller)."""
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=self.env, timeout=30
        )
        if out.returncode != 0:
            return {}
        return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _ping(env: dict) -> bool:
    if not shutil.which("scontrol"):
        return False
    out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env, timeout=30)
    return "is UP" in out.stdout


def _default_partition(env: dict) -> str:
    out = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, env=env, timeout=30)
    names = out.stdout.split()
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0] if names else "debug")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    env = dict(os.environ)
    if env.get("SLURM_CONF") and _ping(env):
        yield Cluster(env, _default_partition(env), started_here=False)
        return
    if os.geteuid() != 0:
        reason = "no SLURM cluster (SLURM_CONF unset or down) and not root to start one with slurm/local/up.sh"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.perf_counter()
    up = subprocess.run(["bash", str(UP), str(state)], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f"slurm/local/up.sh failed:\n{up.stderr[-4000:]}"
    print(f"\nslurm/local/up.sh: cluster up in {time.perf_counter() - t0:.1f} s")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    assert up.stdout.strip() == f"export SLURM_CONF={env['SLURM_CONF']}"
    try:
        yield Cluster(env, _default_partition(env), started_here=True)
    finally:
        down = subprocess.run(["bash", str(DOWN), str(state)], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not list(state.glob("*.pid")), "down.sh left daemons recorded as running"

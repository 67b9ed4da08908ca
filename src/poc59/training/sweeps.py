"""What became of each run of a sweep, read from its files (and `squeue`): `sweep_status(sweep_dir)`.

finished (summary.json), failed (submitit's result pickle, an ERROR in the run's log, or SLURM ended it
without a result), running, or pending; see `python -m poc59.sweep_status`, its command.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

STATES = ("finished", "failed", "running", "pending")


_ERROR_LINE = re.compile(r"\]\[(ERROR|CRITICAL)\] - ")


_SLURM_END = re.compile(
    r"(slurmstepd: error: \*\*\*|srun: error: .*(Exited with exit code|Killed|Terminated)|oom[-_ ]kill|DUE TO TIME LIMIT|CANCELLED)",
    re.IGNORECASE,
)


@dataclass
class Job:
    """One run of the sweep, as far as its files tell."""

    num: int
    status: str = "pending"
    dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    encoder: str | None = None
    decoder: str | None = None
    val_miou: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    wall_time_s: float | None = None
    job_id: str | None = None  # submitit / SLURM job id (array jobs: <id>_<index>)
    slurm_state: str | None = None
    error: list[str] = field(default_factory=list)  # the error's last lines (failed runs)
    log: str | None = None  # the file to read next

    def as_dict(self) -> dict:
        out = asdict(self)
        out["val/mIoU"] = out.pop("val_miou")
        return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` non-empty lines of a text file ([] if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(0, io.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class _Opaque(Exception):
    """Stands in for a class the status tool does not import (keeps its args and state)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


_ALLOWED = (
    "builtins",
    "copyreg",
    "collections",
    "enum",
    "pathlib",
    "datetime",
    "dataclasses",
    "typing",
    "_codecs",
    "hydra",
    "omegaconf",
    "hydra_plugins",
    "submitit",
    "cloudpickle",
    "functools",
    "re",
)


class _SafeUnpickler(pickle.Unpickler):
    """Result pickles of our own jobs, without importing what they reference (torch, the model code).

    Classes from hydra / omegaconf / the standard library load as themselves; any other class (a
    poc59 or torch error, say) becomes an _Opaque subclass of the same name that keeps its message.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _ALLOWED:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                pass
        return type(name, (_Opaque,), {"__module__": module})


def _load_result(path: Path) -> tuple[str, Any]:
    with path.open("rb") as f:
        return _SafeUnpickler(f).load()


def _exception_lines(exc: Any, lines: int) -> list[str]:
    name = type(exc).__name__
    text = f"{name}: {exc}" if str(exc) else name
    return [line for line in text.splitlines() if line.strip()][-lines:]


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The overrides of every job, in job-number order, as Hydra's basic sweeper expands multirun.yaml."""
    cfg = _read_yaml(sweep_dir / "multirun.yaml")
    try:
        hydra_cfg = cfg["hydra"]
        if "BasicSweeper" not in str(hydra_cfg["sweeper"]["_target_"]):
            return None

        params = [f"{k}={v}" for k, v in (hydra_cfg["sweeper"].get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + list(hydra_cfg["overrides"]["task"] or []))
        batches = BasicSweeper.split_arguments(parsed, None)
        return [job for batch in batches for job in batch]
    except Exception:  # another sweeper, an edited file: the folders still tell
        return None


def _task_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("_"))


def submitit_tasks(sweep_dir: Path) -> dict[str, Path]:
    """submitit's task folders by job id (<id> or <id>_<index>; array headers without a task are left out)."""
    root = sweep_dir / ".submitit"
    tasks = {}
    if root.is_dir():
        for d in root.iterdir():
            if (
                d.is_dir()
                and re.fullmatch(r"\d+(_\d+)?", d.name)
                and ((d / f"{d.name}_submitted.pkl").exists() or any(d.glob(f"{d.name}_*_log.*")))
            ):
                tasks[d.name] = d
    return dict(sorted(tasks.items(), key=lambda kv: _task_key(kv[0])))


def run_dirs(sweep_dir: Path) -> dict[int, Path]:
    """The runs' folders by job number (`hydra.sweep.subdir` = the job number, as conf/train.yaml sets)."""
    dirs = {}
    for d in sweep_dir.iterdir():
        if d.is_dir() and d.name.isdigit() and ((d / ".hydra").is_dir() or (d / "summary.json").exists()):
            dirs[int(d.name)] = d
    return dirs


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM states of these jobs by id (<id>_<index> for array tasks); None if squeue cannot tell."""
    if not job_ids or not shutil.which("squeue"):
        return None
    parents = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i|%T", "--jobs", ",".join(parents)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue refuses ids it no longer knows ("Invalid job id"): then none of them is queued
        return {} if "invalid job id" in out.stderr.lower() else None
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state
    return states


def _finished(job: Job, summary_path: Path) -> bool:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return False  # half-written or being written: look again later
    job.status = "finished"
    job.encoder, job.decoder = summary.get("encoder"), summary.get("decoder")
    miou = summary.get("val/mIoU")
    job.val_miou = None if miou is None or (isinstance(miou, float) and math.isnan(miou)) else float(miou)
    job.best_epoch, job.epochs_run = summary.get("best_epoch"), summary.get("epochs_run")
    job.wall_time_s = summary.get("wall_time_s")
    job.log = str(summary_path)
    return True


def _from_result(job: Job, result: Path, lines: int) -> bool:
    """A submitit result pickle: True if it settles the job's state (then failed)."""
    try:
        outcome, value = _load_result(result)
    except Exception as err:
        job.status, job.log = "failed", str(result)
        job.error = [f"unreadable {result.name}: {type(err).__name__}: {err}"]
        return True
    if outcome == "error":  # the launcher itself raised: a traceback string
        job.status, job.log = "failed", str(result)
        job.error = [line for line in str(value).splitlines() if line.strip()][-lines:]
        return True
    status = getattr(getattr(value, "status", None), "name", None)
    if status == "FAILED":  # Hydra caught the run's exception: its message (the run's log has the rest)
        job.status = "failed"
        job.error = _exception_lines(getattr(value, "_return_value", None), lines)
        return True
    job.status = "failed"  # the job returned but wrote no summary.json (looked at before this)
    job.error = ["the run ended without writing summary.json"]
    return True


def inspect_job(job: Job, run_dir: Path | None, task: Path | None, squeue: dict[str, str] | None, lines: int) -> Job:
    """Settle one job's state from its files (and squeue's word on its SLURM job)."""
    if task is not None:
        job.job_id = task.name
    if run_dir is not None:
        job.dir = str(run_dir)
        overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
        if isinstance(overrides, list):
            job.overrides = [str(o) for o in overrides]
        if (run_dir / "summary.json").exists() and _finished(job, run_dir / "summary.json"):
            return job
    err_log = out_log = None
    if task is not None:
        err_log, out_log = task / f"{task.name}_0_log.err", task / f"{task.name}_0_log.out"
        job.log = str(err_log)
        if squeue is not None:
            job.slurm_state = squeue.get(task.name) or squeue.get(task.name.split("_")[0])
        result = task / f"{task.name}_0_result.pkl"
        if result.exists() and _from_result(job, result, lines):
            train_log = run_dir / "train.log" if run_dir else None
            if train_log and train_log.exists() and any(_ERROR_LINE.search(x) for x in _tail(train_log, 400)):
                job.log = str(train_log)  # the run logged its error (with the traceback) there
            return job
    train_log = run_dir / "train.log" if run_dir is not None else None
    if train_log is not None and train_log.exists():
        tail = _tail(train_log, 400)
        errors = [i for i, line in enumerate(tail) if _ERROR_LINE.search(line)]
        if errors:  # the run logged an error and wrote no summary
            job.status, job.log = "failed", str(train_log)
            job.error = tail[errors[0] :][-lines:]
            return job
    started = run_dir is not None or (err_log is not None and (err_log.exists() or out_log.exists()))
    if task is not None and squeue is not None:
        if job.slurm_state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"):
            job.status = "pending" if not started or job.slurm_state == "PENDING" else "running"
            return job
        if job.slurm_state is None or job.slurm_state in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
        ):
            job.status = "failed"  # SLURM no longer runs it and it left no result
            tail = _tail(err_log, lines) if err_log and err_log.exists() else []
            why = f"SLURM job {task.name} ended ({job.slurm_state or 'no longer queued'}) without a result"
            job.error = tail + [why] if tail else [why]
            return job
        job.status = "running"
        return job
    if task is not None and err_log.exists():
        tail = _tail(err_log, 200)
        ends = [i for i, line in enumerate(tail) if _SLURM_END.search(line)]
        if ends:
            job.status = "failed"
            job.error = tail[max(0, ends[0] - lines + 1) : ends[0] + 1][-lines:]
            return job
    job.status = "running" if started else "pending"
    if train_log is not None and train_log.exists() and job.log is None:
        job.log = str(train_log)
    return job


def find_sweep(path: Path) -> Path:
    """`path` if it is a sweep folder, else its newest sweep subfolder."""
    if (path / "multirun.yaml").exists() or (path / ".submitit").is_dir():
        return path
    if path.is_dir():
        sweeps = [d for d in path.iterdir() if d.is_dir() and (d / "multirun.yaml").exists()]
        if sweeps:
            return max(sweeps, key=lambda d: (d / "multirun.yaml").stat().st_mtime)
    raise FileNotFoundError(
        f"{path} is not a sweep folder (no multirun.yaml, no .submitit/, and no sweep inside it). "
        "A sweep is what `python -m poc59.train -m ...` writes, by default under outputs/sweeps/<date_time>"
    )


def _varying(jobs: list[Job]) -> None:
    """Keep in each job's overrides only those that differ between the jobs (all of them if none differ)."""
    keyed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j.overrides) for j in jobs]
    keys = {k for d in keyed for k in d}
    vary = {k for k in keys if len({d.get(k) for d in keyed}) > 1}
    if vary:
        for j, d in zip(jobs, keyed):
            j.overrides = [f"{k}={v}" for k, v in d.items() if k in vary]


def sweep_status(sweep_dir: str | Path, lines: int = 5, use_squeue: bool = True) -> dict:
    """The state of every job of a sweep: {"sweep_dir", "counts", "jobs": [Job.as_dict(), ...]}."""
    sweep = find_sweep(Path(sweep_dir).expanduser().resolve())
    expected = expected_jobs(sweep) or []
    dirs = run_dirs(sweep)
    tasks = submitit_tasks(sweep)

    # job number -> submitit task: exact from each started run's hydra.job.id, else in submission order
    task_of: dict[int, str] = {}
    for num, d in dirs.items():
        hydra_yaml = _read_yaml(d / ".hydra" / "hydra.yaml")
        try:
            jid = str(hydra_yaml["hydra"]["job"]["id"])
        except (TypeError, KeyError):
            continue
        if jid in tasks:
            task_of[num] = jid
    nums = sorted(set(range(len(expected))) | set(dirs) | set(range(len(tasks))))
    order, claimed = list(tasks), set(task_of.values())
    for num in nums:
        if num not in task_of and num < len(order) and order[num] not in claimed:
            task_of[num] = order[num]
            claimed.add(order[num])

    squeue = _squeue(list(tasks)) if use_squeue and tasks else None
    jobs = []
    for num in nums:
        job = Job(num=num, overrides=list(expected[num]) if num < len(expected) else [])
        task = tasks.get(task_of[num]) if num in task_of else None
        jobs.append(inspect_job(job, dirs.get(num), task, squeue, lines))
    _varying(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in STATES}
    return {"sweep_dir": str(sweep), "counts": counts, "jobs": [j.as_dict() for j in jobs]}

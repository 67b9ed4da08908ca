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

from poc59.core.logs import ERROR_LINE

STATES = ("finished", "failed", "running", "pending")


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
        out["cause"] = cause(self.error) if self.error else None
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


_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt|Failed)\b(:|$)")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+ [\w.]+: |^\[[^]]*\]\[[^]]*\]\[\w+\] - ")


def cause(error: list[str]) -> str:
    """Why a job failed, in one line of its error lines: the first line of the exception raised last
    (`ValueError: data.image_size=63 ...`; a chained traceback's last), else SLURM's end line, else the
    first logged ERROR's message, else the last line."""
    lines = [line.strip() for line in error if line.strip()]
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    if raised:
        return raised[-1]
    ended = [line for line in lines if _SLURM_END.search(line)]
    if ended:
        return ended[0]
    logged = [line for line in lines if ERROR_LINE.search(line)]
    return _LOG_PREFIX.sub("", logged[0] if logged else lines[-1]) if lines else ""


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
        started = any((d / marker).exists() for marker in (".hydra", "summary.json", "train.log"))
        if d.is_dir() and d.name.isdigit() and started:  # train.log alone: refused before the run began
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


# What squeue's state means for a job that left neither a summary nor a result; a state not listed is running.
SLURM_STATES = {
    **dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"), "waiting"),
    **dict.fromkeys(
        (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
        ),
        "ended",  # SLURM no longer runs it
    ),
}


@dataclass(frozen=True)
class _JobFiles:
    """Where one job's files are: its run folder (Hydra) and its submitit task folder (absent locally)."""

    run_dir: Path | None
    task: Path | None

    @property
    def train_log(self) -> Path | None:
        return self.run_dir / "train.log" if self.run_dir is not None else None

    @property
    def err_log(self) -> Path | None:
        return self.task / f"{self.task.name}_0_log.err" if self.task is not None else None

    @property
    def started(self) -> bool:
        logs = (self.err_log, self.task / f"{self.task.name}_0_log.out") if self.task is not None else ()
        return self.run_dir is not None or any(p.exists() for p in logs)


def inspect_job(job: Job, run_dir: Path | None, task: Path | None, squeue: dict[str, str] | None, lines: int) -> Job:
    """Settle one job's state from its files (and squeue's word on its SLURM job). The first witness that
    speaks decides, in this order: summary.json (finished), submitit's result (finished or failed), an
    error in train.log (failed), squeue's state, an end line of SLURM's in the job's stderr (failed);
    else the job is running if it left any file, pending if not."""
    files = _JobFiles(run_dir, task)
    _identify(job, files)
    if _by_summary(job, files):
        return job
    if files.task is not None:
        job.log = str(files.err_log)
        if squeue is not None:
            job.slurm_state = squeue.get(files.task.name) or squeue.get(files.task.name.split("_")[0])
    for witness in (_by_result, _by_train_log, _by_squeue, _by_slurm_log):
        if witness(job, files, squeue, lines):
            return job
    job.status = "running" if files.started else "pending"
    if files.train_log is not None and files.train_log.exists() and job.log is None:
        job.log = str(files.train_log)
    return job


def _identify(job: Job, files: _JobFiles) -> None:
    if files.task is not None:
        job.job_id = files.task.name
    if files.run_dir is not None:
        job.dir = str(files.run_dir)
        overrides = _read_yaml(files.run_dir / ".hydra" / "overrides.yaml")
        if isinstance(overrides, list):
            job.overrides = [str(o) for o in overrides]


def _by_summary(job: Job, files: _JobFiles) -> bool:
    summary = files.run_dir / "summary.json" if files.run_dir is not None else None
    return summary is not None and summary.exists() and _finished(job, summary)


def _by_result(job: Job, files: _JobFiles, squeue: dict[str, str] | None, lines: int) -> bool:
    result = files.task / f"{files.task.name}_0_result.pkl" if files.task is not None else None
    if result is None or not result.exists() or not _from_result(job, result, lines):
        return False
    if _error_lines(files.train_log, lines)[1]:
        job.log = str(files.train_log)  # the run logged its error (with the traceback) there
    return True


def _by_train_log(job: Job, files: _JobFiles, squeue: dict[str, str] | None, lines: int) -> bool:
    error, found = _error_lines(files.train_log, lines)
    if found:  # the run logged an error and wrote no summary
        job.status, job.log, job.error = "failed", str(files.train_log), error
    return found


def _by_squeue(job: Job, files: _JobFiles, squeue: dict[str, str] | None, lines: int) -> bool:
    if files.task is None or squeue is None:
        return False
    meaning = SLURM_STATES.get(job.slurm_state, "running") if job.slurm_state is not None else "ended"
    if meaning == "waiting":
        job.status = "pending" if not files.started or job.slurm_state == "PENDING" else "running"
    elif meaning == "ended":
        job.status = "failed"  # and it left no result
        tail = _tail(files.err_log, lines) if files.err_log.exists() else []
        job.error = tail + [
            f"SLURM job {files.task.name} ended ({job.slurm_state or 'no longer queued'}) without a result"
        ]
    else:
        job.status = "running"
    return True


def _by_slurm_log(job: Job, files: _JobFiles, squeue: dict[str, str] | None, lines: int) -> bool:
    if files.err_log is None or not files.err_log.exists():
        return False
    tail = _tail(files.err_log, 200)
    ends = [i for i, line in enumerate(tail) if _SLURM_END.search(line)]
    if ends:
        job.status = "failed"
        job.error = tail[max(0, ends[0] - lines + 1) : ends[0] + 1][-lines:]
    return bool(ends)


def _error_lines(train_log: Path | None, lines: int) -> tuple[list[str], bool]:
    """(the last `lines` lines from the first ERROR of train.log's tail on, whether there is one)."""
    if train_log is None or not train_log.exists():
        return [], False
    tail = _tail(train_log, 400)
    errors = [i for i, line in enumerate(tail) if ERROR_LINE.search(line)]
    return (tail[errors[0] :][-lines:], True) if errors else ([], False)


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

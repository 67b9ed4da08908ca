"""Who holds a folder: a lock file naming its holder (host, pid, SLURM job), taken over when the holder is dead.

A process is judged as the preload cache judges its writers: on this machine, by whether its pid still runs
(`alive`); on another machine (a shared filesystem) by its lock's heartbeat, which the holder refreshes every
`BEAT_S` seconds, so a lock untouched for `STALE_S` belongs to a dead holder. An earlier attempt of this same
SLURM job (a requeue: SLURM runs one attempt at a time) is dead whatever its host. On this machine a pid can
be reused (after a reboot, or once the holder ended): the lock also records the boot id and the process's start
time, and a lock from another boot, or whose pid now runs a process started at another time, is dead.
A lock file that cannot be read (a holder killed while writing it, a full disk) and is older than `GRACE_S`
is dead too: holders write theirs whole before it takes the name.

`FolderLock(folder).acquire()` creates `<folder>/.poc59.lock` atomically (written whole, then linked into place), or raises `LockHeld`
naming the live holder; `release()` removes it (only if it is still this process's).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from poc59.core.config import SettingError

log = logging.getLogger(__name__)

LOCK_NAME = ".poc59.lock"
BEAT_S = 60.0  # the holder touches its lock this often
STALE_S = 600.0  # another machine's lock untouched this long belongs to a dead holder
GRACE_S = 5.0  # an unreadable lock file this old is no holder's lock being written: it is dead
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This machine's current boot (None where the kernel does not say)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None when it does not run or cannot be read."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (someone else's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """The process a lock names: where it runs, since when, and under which SLURM job attempt."""

    host: str
    pid: int
    started: str
    slurm_job: str | None = None
    slurm_restart: int = 0
    boot: str | None = None  # the machine's boot id when the lock was taken
    pid_started: float | None = None  # the holder's start time, to tell it from a later process given its pid

    @classmethod
    def this_process(cls) -> Holder:
        job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
            f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
        )
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            slurm_job=job or os.environ.get("SLURM_JOB_ID"),
            slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            boot=boot_id(),
            pid_started=start_time(os.getpid()),
        )

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.started}"


class LockHeld(SettingError):
    """The folder is held by another live process (the command exits 2)."""


def _read(path: Path) -> tuple[Holder | None, float]:
    """(the holder a lock file names, its last heartbeat), (None, 0) when it is gone or unreadable."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return Holder(**data), path.stat().st_mtime
    except (OSError, ValueError, TypeError):
        return None, 0.0


def holder_is_dead(holder: Holder, heartbeat: float, me: Holder) -> bool:
    """Whether a lock's holder no longer runs (see the module's docstring for how each case is judged)."""
    if holder.slurm_job and holder.slurm_job == me.slurm_job and holder.slurm_restart < me.slurm_restart:
        return True  # an earlier attempt of this requeued job
    if holder.host == me.host:
        if holder.pid == me.pid or not alive(holder.pid):  # my own pid: a container's restart reuses it
            return True
        if holder.boot and me.boot and holder.boot != me.boot:
            return True  # taken before a reboot: its pid now names another process
        now_started = start_time(holder.pid)
        # create_time is rounded differently across reads: a second apart is another process
        return (
            holder.pid_started is not None and now_started is not None and abs(now_started - holder.pid_started) > 1.0
        )
    return time.time() - heartbeat > STALE_S


class FolderLock:
    """One process at a time in `folder`; `what` names the work in the refusal ("training")."""

    def __init__(self, folder: Path, what: str = "training") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self.me = Holder.this_process()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> FolderLock:
        """Take the lock (a dead holder's is taken over, with a log line), or raise `LockHeld`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a dead holder's lock moved aside, then created again: at most a race or two
            if self._create():
                self._start_heartbeat()
                return self
            holder, heartbeat = _read(self.path)
            if holder is None:
                self._take_over_unreadable()
                continue
            if not holder_is_dead(holder, heartbeat, self.me):
                raise self._held(holder)
            self._take_over(holder)
        raise LockHeld(f"could not take {self.path}: other processes keep replacing it; start again")

    def check(self) -> None:
        """`LockHeld` when a live process holds the folder; takes nothing and writes nothing (a command's check
        before it opens any file there)."""
        holder, heartbeat = _read(self.path)
        if holder is not None and not holder_is_dead(holder, heartbeat, self.me):
            raise self._held(holder)

    def _held(self, holder: Holder) -> LockHeld:
        stop = f"scancel {holder.slurm_job}" if holder.slurm_job else f"kill {holder.pid}"
        return LockHeld(
            f"{self.path.parent} is in use by another {self.what} ({holder.describe()}): two at once would "
            f"mix their logs and checkpoints. Wait for it to end, or stop it ({stop} on {holder.host}) "
            "and start again; its lock is taken over once it no longer runs"
        )

    def _create(self) -> bool:
        """Write this process's details to a temporary file and link it to the lock's name: the lock is whole
        from the instant it exists (a crash or a full disk while writing leaves no empty lock behind)."""
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_NAME}.new-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(self.me), f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _take_over_unreadable(self) -> None:
        """A lock file that cannot be read: no poc59 holder writes one (they are linked whole into place), so once
        older than GRACE_S (not one replaced this instant) it is a dead holder's and is moved aside and dropped."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if age < GRACE_S:
            time.sleep(0.2)
            return
        aside = self.path.with_name(f"{LOCK_NAME}.dead-{self.me.host}-{self.me.pid}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside)[0] is not None:  # replaced by a readable lock meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("Took over %s: it could not be read (left by a holder that died writing it)", self.path)
        aside.unlink(missing_ok=True)

    def _take_over(self, dead: Holder) -> None:
        """Move a dead holder's lock aside (atomic: one of two racing starts gets it) and drop it; a lock that
        turns out to be another's fresh one (it replaced the dead one meanwhile) is put back."""
        aside = self.path.with_name(f"{LOCK_NAME}.dead-{self.me.host}-{self.me.pid}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved, _ = _read(aside)
        if moved != dead:
            try:
                os.link(aside, self.path)  # back in place unless a third start took the name meanwhile
            except FileExistsError:
                pass
        else:
            log.info("Took over %s from a %s that no longer runs (%s)", self.path, self.what, dead.describe())
        aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(BEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # gone or unwritable: its holder still runs; on this machine its pid says so

        self._beat = threading.Thread(target=beat, name="poc59-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        self._stop.set()
        holder, _ = _read(self.path)
        if holder == self.me:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Which of a trainer's loggers are poc59 trackers, and what evaluate and compare add to the tracked runs
they read (poc59.tracking.record: <run>/tracking.json).

A run folder that was never tracked is left alone; a tracker that cannot be reached is named in the log
and the command goes on (its own outputs are written either way)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from poc59.tracking import mlflow_tracker, wandb_tracker
from poc59.tracking.record import RunTracker, read

log = logging.getLogger(__name__)


def trackers(loggers: Iterable[object]) -> list:
    """The poc59 trackers among a trainer's loggers (they are told when a run begins and completes)."""
    return [lg for lg in loggers if isinstance(lg, RunTracker)]


ADDERS = {mlflow_tracker.NAME: mlflow_tracker.add, wandb_tracker.NAME: wandb_tracker.add}


def add_to_tracked(
    run_dir: str | Path | None, metrics: dict[str, float], files: Iterable[Path], under: str
) -> list[str]:
    """Add `metrics` and `files` (under `under/` among the run's artifacts) to every tracked run of
    `run_dir`; returns the trackers written to."""
    if run_dir is None:
        return []
    files = [Path(f) for f in files if Path(f).is_file()]
    done = []
    for name, entry in read(run_dir).items():
        adder = ADDERS.get(name)
        if adder is None:
            continue
        try:
            adder(entry, metrics, files, under)
            done.append(name)
        except Exception as err:  # a server down must not lose the evaluation itself
            log.warning("Could not add %s to the %s run of %s: %s", under, name, run_dir, str(err).splitlines()[0])
    if done:
        log.info(
            "Added %s (%d metrics, %d files) to the %s run of %s",
            under,
            len(metrics),
            len(files),
            ", ".join(done),
            run_dir,
        )
    return done

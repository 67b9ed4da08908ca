"""`logger=wandb`: Lightning's WandbLogger bound to one poc59 run folder, offline by default.

Compute nodes rarely reach the internet: with `mode: offline` (the default, or WANDB_MODE=offline) the run
is written to <run>/wandb/offline-run-*, and `wandb sync <run>/wandb/offline-run-*` uploads it later from
a login node. `mode: online` sends it at once (after `wandb login`). The content is MLflow's: the flattened
config, tags (as config `poc59_tags`), every metric, and at the end the best figures (the run summary)
and the run's records as files. The W&B run id is kept in <run>/tracking.json: a resumed run, evaluate
and compare write to the same id (offline, each writes its own offline-run folder; `wandb sync` joins them).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from poc59.tracking.record import RunTracker, metric_name, read, remember

log = logging.getLogger(__name__)

NAME = "wandb"
MODES = ("offline", "online", "disabled")


def new_id() -> str:
    """A W&B run id (8 characters of [a-z0-9], as wandb makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbTracker(RunTracker, WandbLogger):
    """One poc59 run as one W&B run (see the module docstring)."""

    def __init__(
        self,
        run_dir: str,
        project: str = "poc59",
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
        run_name: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"logger.wandb.mode={mode}: choose {', '.join(MODES)}")
        self.run_dir = Path(run_dir)
        earlier = read(self.run_dir).get(NAME)
        self.resumed = earlier is not None
        self.wandb_mode = mode
        super().__init__(
            name=run_name or self.run_dir.name,
            save_dir=str(self.run_dir),
            project=earlier["project"] if earlier else project,
            id=earlier["id"] if earlier else new_id(),
            entity=entity,
            group=group,
            mode=mode,
            resume="allow",
            log_model=False,
            settings={"silent": True},
        )
        self._wandb_init.pop("anonymous", None)  # Lightning passes it; wandb >= 0.19 warns that it does nothing

    @rank_zero_only
    def begin(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """Open (or reopen) the run, keep its id in <run>/tracking.json, log the config and tags."""
        run = self.experiment
        remember(
            self.run_dir,
            NAME,
            {"id": run.id, "project": run.project, "mode": self.wandb_mode, "dir": str(self.run_dir)},
        )
        run.config.update({**params, "poc59_tags": tags}, allow_val_change=True)
        log.info(
            "W&B: %s run %s (%s)%s",
            "continuing" if self.resumed else "new",
            run.id,
            self.wandb_mode,
            f"; upload later with: wandb sync {self.run_dir / 'wandb'}/offline-run-*"
            if self.wandb_mode == "offline"
            else "",
        )

    @rank_zero_only
    def complete(self, metrics: dict[str, float], files: list[Path]) -> None:
        """The best figures as the run's summary, the records as its files."""
        run = self.experiment
        run.summary.update({metric_name(k): v for k, v in metrics.items() if v is not None})
        keep(run, files, "run")
        finish(run)  # the run file complete now, not at the process's exit (train called as a library)


def add(entry: dict, metrics: dict[str, float], files: list[Path], under: str) -> None:
    """Metrics (as summary values) and files added to the W&B run of `entry` (a tracking.json record)."""
    import wandb

    run = wandb.init(
        id=entry["id"],
        project=entry["project"],
        dir=entry["dir"],
        mode=entry["mode"],
        resume="allow",
        settings=wandb.Settings(silent=True),
    )
    try:
        run.summary.update({metric_name(k): v for k, v in metrics.items() if v is not None})
        keep(run, files, under)
    finally:
        finish(run)


def finish(run: Any) -> None:
    """End `run` with its files written: `run.finish()` returns before wandb-core has written the offline
    transaction log (<run>/wandb/offline-run-*/run-<id>.wandb; a reader right after can find its header alone),
    and `wandb.teardown()` waits for the service to close it. The next `wandb.init` starts a new service."""
    import wandb

    run.finish()
    wandb.teardown()


def keep(run: Any, files: list[Path], under: str) -> None:
    """Copies of `files` in the run's own files folder under `under/` (what `wandb sync` uploads; a link to a
    file that later moves would upload nothing)."""
    for f in files:
        copy = Path(run.dir) / under / Path(f).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, copy)
        run.save(str(copy), base_path=run.dir, policy="now")

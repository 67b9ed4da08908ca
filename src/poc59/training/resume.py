"""Run identity and resume: a run folder that holds `last.ckpt` is continued, not overwritten.

`resume=auto` (default) continues from `<run folder>/checkpoints/last.ckpt` when it
exists, after checking that the configuration is the same one the run started
with (keys that are safe to change, such as `trainer.max_epochs` or paths, are
allowed to differ: `poc59.training.keys`). `resume=never` starts over in a new sibling folder.
`ckpt_path=...` resumes from any checkpoint, unchecked.

A run folder is where it is now: a copied or moved run (`cp -a runs/r1 runs/r2`) resumes in place, its
paths derived from the folder (checkpoint folders, the trainer's root, the loggers') compared as the new
folder's (`relocated`); the checkpoint callbacks re-root their saved state the same way
(`poc59.training.checkpointing.RunCheckpoint`), so it never writes into the folder it was copied from.
A non-empty folder that is not a poc59 run is refused (`foreign_entries`).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from poc59.artifacts.trained import best_checkpoint
from poc59.core.config import SettingError, flatten
from poc59.training import keys
from poc59.training.distributed import first_process

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")

# What may change between attempts of one run: how long it trains, where it is, how fast it goes (the one
# table of `poc59.training.keys`; compare reads the same).
MAY_CHANGE = (keys.LENGTH, keys.LOCATION, keys.SPEED)


# poc59 classes that moved between packages: a run folder whose saved config names the old path continues with the new.
RENAMED_TARGETS = {
    "poc59.throughput.TrainThroughput": "poc59.training.throughput.TrainThroughput",
    "poc59.val_overlays.ValidationOverlays": "poc59.training.overlays.ValidationOverlays",
}

# poc59's own checkpoint callbacks that became a poc59 class (one best.ckpt per run): a run started with
# Lightning's resumes with it. By key: a ModelCheckpoint the user added keeps its class.
REPLACED_AT = {
    f"callbacks.{name}._target_": (
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "poc59.training.checkpointing.RunCheckpoint",
    )
    for name in ("model_checkpoint", "last_checkpoint")
}


# Keys added after runs were started, with the value that means "as before": a run started without the key
# resumes when the key has that value.
ADDED_KEYS = {
    "data.allow_large_images": False,
    "data.cv.folds": None,  # cross-validation came later: a run from before it had one split
    "data.cv.fold": 0,
    "data.cv.by": None,
    "data.cv.min_images": None,
    "data.crop_sampling.rare_fraction": 0.0,  # class-aware windows came later: uniform windows before them
}


# Keys that change nothing unless another key has a value: ignored while it has not, before and now.
ONLY_WHEN = {
    "data.crop_sampling.": ("data.policy", "crop"),  # where windows fall: resize and pad runs have no windows
}


class ResumeConfigError(SettingError):
    """The run folder cannot be started or continued as asked (a different configuration, a damaged
    checkpoint, fewer epochs than it has run, a folder that is not a run): the command exits 2."""


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def changed_keys(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ (missing counts as None), except those that may change (`MAY_CHANGE`)."""
    a, b = flatten(old), flatten(new)
    a = {k: RENAMED_TARGETS.get(v, v) if k.endswith("_target_") else v for k, v in a.items()}
    a = {k: REPLACED_AT[k][1] if k in REPLACED_AT and v == REPLACED_AT[k][0] else v for k, v in a.items()}
    diff = {}
    for key in sorted(set(a) | set(b)):
        if keys.kind(key, a, b) in MAY_CHANGE:
            continue
        if any(key.startswith(p) and a.get(k) != v and b.get(k) != v for p, (k, v) in ONLY_WHEN.items()):
            continue  # inert in this run, before and now
        if key not in a and key in ADDED_KEYS and b.get(key) == ADDED_KEYS[key]:
            continue  # the run began before the key existed, and it keeps the behaviour of then
        if a.get(key) != b.get(key):
            diff[key] = (a.get(key), b.get(key))
    return diff


def intact(path: Path) -> bool:
    """Whether a checkpoint file is whole: torch writes a zip whose directory is at the end, so a file cut
    short (a full disk, a copy interrupted) has none. Cheap: the directory is read, not the tensors."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_intact(last: Path) -> None:
    """ResumeConfigError naming the file and both ways on when `last.ckpt` is damaged: resume=auto would
    otherwise stop in torch.load with "file is corrupted"."""
    if intact(last):
        return
    best = best_checkpoint(last.parent.parent)  # <run>/checkpoints/last.ckpt: the run's own best
    other = f"ckpt_path={best} to continue from the best epoch's checkpoint, or " if intact(best) else ""
    raise ResumeConfigError(
        f"{last} is damaged (cut short: it is no complete checkpoint), so this run cannot continue from it. "
        f"Pass {other}resume=never to start over in a new folder (this one is kept as it is)."
    )


# What poc59 itself may leave in a folder before a run's records exist: Hydra's log of a start, the log
# slurm/train.sbatch tees into the run folder, a run-folder lock.
OWN_LOGS = ("train.log", "slurm-*.log", ".poc59.lock")


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a poc59 run: its .hydra/ record, or a config.yaml composed from conf/train.yaml."""
    if (folder / ".hydra" / "config.yaml").is_file() or last_checkpoint(folder).is_file():
        return True
    try:
        saved = OmegaConf.load(folder / "config.yaml")
        return "run_dir" in saved.get("paths", {}) and "trainer" in saved and "callbacks" in saved
    except Exception:  # absent, unreadable, not YAML, not a mapping: not a run's config
        return False


def foreign_entries(folder: Path) -> list[str]:
    """The entries of a folder that is not a poc59 run and holds more than poc59's own logs ([] otherwise):
    a run there would replace its files (config.yaml, split.json...) and mix its outputs with them."""
    if not folder.is_dir() or is_run(folder):
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not _own_log(p))


def _own_log(path: Path) -> bool:
    return path.is_file() and any(path.match(pattern) for pattern in OWN_LOGS)


def check_not_foreign(folder: Path) -> None:
    """SettingError (via ResumeConfigError) naming what is in a folder that is not a poc59 run."""
    found = foreign_entries(folder)
    if found:
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise ResumeConfigError(
            f"run_dir={folder} is not a poc59 run folder and is not empty ({shown}): a run there would replace "
            f"or mix with those files. Pass a new or empty folder, e.g. run_dir={_free_sibling(folder)}"
        )


def recorded_run_dir(run_dir: Path) -> Path | None:
    """The folder the run's config.yaml says it was in (elsewhere when it was copied or moved), or None."""
    try:
        return Path(OmegaConf.load(run_dir / "config.yaml").paths.run_dir)
    except Exception:  # no config.yaml, or not one with paths.run_dir: nothing to relocate from
        return None


def relocated(tree: Any, old: Path, new: Path) -> Any:
    """A config tree (mappings, lists, strings) with every path at or under `old` moved under `new`."""
    if isinstance(tree, dict):
        return {k: relocated(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(relocated(v, old, new) for v in tree)
    if isinstance(tree, str) and (tree == str(old) or tree.startswith(str(old) + os.sep)):
        return str(new) + tree[len(str(old)) :]
    return tree


def epochs_done(ckpt: Path) -> int | None:
    """Epochs a checkpoint has completed (None if it does not say); its tensors are mapped, not read."""
    try:
        state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
        return int(state["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"])
    except Exception:  # not a Lightning training checkpoint: Lightning names what is wrong when it loads it
        return None


def check_max_epochs(cfg: DictConfig, ckpt: Path, run_dir: Path) -> None:
    """ResumeConfigError, before anything is written, when trainer.max_epochs is below the epochs the
    checkpoint has already completed (Lightning would stop with a traceback, or keep nothing of the run)."""
    wanted = cfg.trainer.get("max_epochs")
    if not isinstance(wanted, int) or wanted < 0:
        return  # -1 / None: no epoch limit
    done = epochs_done(ckpt)
    if done is not None and wanted < done:
        raise ResumeConfigError(
            f"trainer.max_epochs={wanted} is below the {done} epochs {run_dir} has completed ({ckpt}): a run "
            f"cannot train backwards. Pass trainer.max_epochs={done} (nothing more to train) or more to continue it"
        )


def _free_sibling(run_dir: Path) -> Path:
    n = 2
    while (run_dir.parent / f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.parent / f"{run_dir.name}-{n}"


def plan(cfg: DictConfig, run_dir: Path) -> tuple[Path, str | None]:
    """(run folder to use, checkpoint to resume from or None), or ResumeConfigError."""
    mode = cfg.get("resume", "auto")
    if mode not in RESUME_MODES:
        raise ValueError(f"resume={mode!r} must be one of {RESUME_MODES}")
    if first_process():  # the others start while the first writes the run's records into the folder
        check_not_foreign(run_dir)
    if cfg.get("ckpt_path"):
        given = Path(cfg.ckpt_path).expanduser().resolve()
        check_max_epochs(cfg, given, run_dir)
        log.info("Resuming from %s (ckpt_path)", cfg.ckpt_path)
        return run_dir, str(given)
    last = last_checkpoint(run_dir)
    if not last.exists():
        return run_dir, None
    if mode == "never":
        new_dir = _free_sibling(run_dir)
        log.info("%s holds a run and resume=never: starting over in %s", run_dir, new_dir)
        return new_dir, None
    check_intact(last)
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = keys.current(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))  # a run of any version
        was = recorded_run_dir(run_dir)
        if was is not None and was != run_dir:
            old = relocated(old, was, run_dir)  # a copied or moved run: its own paths are this folder's
        new = OmegaConf.to_container(cfg, resolve=True)
        diff = changed_keys(old, new)
        if diff:
            lines = "\n".join(f"  {k}: {o!r} -> {n!r}" for k, n_o in diff.items() for o, n in [n_o])
            raise ResumeConfigError(
                f"{run_dir} holds a run started with a different configuration; refusing to resume it with:\n{lines}\n"
                "Restore those settings to continue it, or pass resume=never to start over in a new folder."
            )
    check_max_epochs(cfg, last, run_dir)
    log.info("Resuming from %s", last)
    return run_dir, str(last)

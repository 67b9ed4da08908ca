"""Train one model: `python -m poc59.train [Hydra overrides]`.

Composes conf/train.yaml with the overrides (Hydra; `-m` sweeps go to the configured launcher) and runs
`poc59.training.run.train`. Exit 0 done, 2 a setting or the data is wrong (one plain message), 1 a bug.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from poc59.core.cli import DONE, run_command
from poc59.core.config import SettingError, config_dir, register_resolvers
from poc59.core.locks import FolderLock
from poc59.core.logs import setup_logging, take_verbose
from poc59.core.overrides import ConfigCommand, split_argv
from poc59.training.distributed import adopt_submitit_local_ranks, first_process, stop_local_siblings

log = logging.getLogger("poc59.train")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from poc59.training.run import USER_ERRORS, train

    verbose = take_verbose([])[1] or bool(HydraConfig.get().verbose)
    setup_logging(verbose, handlers=logging.getLogger().handlers)  # Hydra's console and train.log, one format
    try:
        adopt_submitit_local_ranks(cfg.trainer.devices, cfg.trainer.num_nodes)
        summary = train(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        stop_local_siblings()
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweep's job: the launcher records the error and reports it when the sweep ends
        raise SystemExit(2) from None
    except Exception:
        log.exception("Run failed")  # in a sweep Hydra keeps only the message; the log keeps the traceback
        stop_local_siblings()
        raise
    if first_process():
        print(cfg.paths.run_dir, flush=True)  # stdout holds the one result a script reads: the run folder
    return summary[summary["monitor"]]  # the value a Hydra sweeper optimises: the metric that picks the best epoch


def asks_every_fold(cfg: DictConfig | None) -> bool:
    """Whether the config sweeps every fold itself (experiment=cv: `data.cv.fold: ${cv_folds:}`)."""
    params = cfg.hydra.sweeper.get("params") if cfg is not None and "hydra" in cfg else None
    return bool(params) and "${cv_folds:" in str(OmegaConf.to_container(params).get("data.cv.fold"))


def with_every_fold(argv: list[str], first: DictConfig | None) -> list[str]:
    """experiment=cv and experiment=leave_one_material_out sweep every fold (`data.cv.fold: ${cv_folds:}`):
    the folds are written out as a command-line sweep, so the sweep's multirun.yaml lists each job's fold
    (what sweep_status and compare read) and the fold list is the one checked here."""
    from poc59.data.folds import sweep_values

    given = any(a.lstrip("+~").split("=", 1)[0] == "data.cv.fold" for a in argv)
    if not asks_every_fold(first) or given:
        return argv
    at = max(i for i, a in enumerate(argv) if a in split_argv(argv)[0]) + 1  # with the others: Hydra's flags after
    return [*argv[:at], f"data.cv.fold={sweep_values(first.data)}", *argv[at:]]


def _check_settings(cfg: DictConfig) -> None:
    """`check_settings`, then the sweep the config itself asks for (experiment=cv: every fold); every user
    error (a missing weights file, a metadata column that is not there) as the SettingError main reports.
    Imports the training library: it runs once the overrides have composed."""
    from poc59.data.folds import register_cv_folds, sweep_values
    from poc59.training.preflight import check_settings
    from poc59.training.run import USER_ERRORS

    register_cv_folds()  # the resolver of experiment=cv's sweep, before anything resolves the config
    try:
        check_settings(cfg)
        if asks_every_fold(cfg):
            sweep_values(cfg.data)  # the folds exist (metadata column, counts) before any job is submitted
    except USER_ERRORS as err:
        raise SettingError(str(err)) from None


SUMMARY = (
    "Train one model (or, with -m, a sweep of them): compose conf/train.yaml with the overrides, then fit,\n"
    "checkpoint, and write the run's summary.json. Examples:\n"
    "  python -m poc59.train experiment=quickstart\n"
    "  python -m poc59.train encoder=segformer_b3 data=artefact data.root=/data/artefact trainer.accelerator=gpu\n"
    "  python -m poc59.train encoder=convnext_tiny decoder=fpn run_dir=outputs/runs/convnext-fpn"
)


def is_sweep(argv: list[str], first: DictConfig) -> bool:
    """Whether the command runs a sweep: -m, or a config that asks for one (experiment=cv: hydra.mode)."""
    return bool(get_args_parser().parse_known_args(argv)[0].multirun) or str(first.hydra.get("mode")).endswith(
        "MULTIRUN"
    )


def pin_sweep_folder(argv: list[str], first: DictConfig) -> tuple[list[str], Path]:
    """(argv with hydra.sweep.dir= the folder the sweep will write, that folder): resolved once, here, so
    its end can name it (the default holds the time, which Hydra would resolve again later)."""
    from poc59.training.run import hydra_quoted

    given = [a for a in argv if a.split("=", 1)[0] == "hydra.sweep.dir"]
    folder = Path(first.hydra.sweep.dir)
    return (argv if given else [*argv, f"hydra.sweep.dir={hydra_quoted(str(folder))}"]), folder


def report_sweep(folder: Path) -> None:
    """The end of a sweep: its folder on stdout (the result a script reads), what to run next in the log."""
    log.info(
        "Sweep finished: %s\nNext:\n  python -m poc59.sweep_status %s\n  python -m poc59.compare %s",
        folder,
        shlex.quote(f"sweep={folder}"),
        shlex.quote(f"sweep={folder}"),
    )
    print(folder, flush=True)


CLI = ConfigCommand("python -m poc59.train", SUMMARY, check=_check_settings)  # -m: every swept value checked


def _train(options: dict[str, Any]) -> int:
    """The run (or sweep) the checked overrides ask for: the run folder checked and its lock tested before
    Hydra creates it and opens its train.log there, then Hydra's main."""
    from poc59.data.folds import register_cv_folds
    from poc59.training.run import check_run_folder

    register_resolvers()
    register_cv_folds()
    argv, first = options["argv"], options["cfg"]
    sys.argv[1:] = argv  # Hydra reads sys.argv; -v is taken out (every log line: poc59.core.logs)
    shown = first is None or get_args_parser().parse_known_args(argv)[0].cfg  # Hydra's flags: nothing is run
    sweep = None
    if not shown and is_sweep(argv, first):
        argv, sweep = pin_sweep_folder(with_every_fold(argv, first), first)
        sys.argv[1:] = argv
    elif not shown:
        run_dir = Path(first.hydra.run.dir)
        check_run_folder(run_dir)  # before Hydra creates it and its train.log
        if first_process() and first.get("resume") != "never":  # resume=never starts in another folder
            FolderLock(run_dir, "training").check()  # held: refused before Hydra opens its train.log there
    _hydra_main()
    if sweep is not None:
        report_sweep(sweep)
    return DONE


def main(argv: list[str] | None = None) -> int:
    """Check the overrides (exit 2 with the fix, before anything is read or imported), answer --help, then
    run Hydra (`argv`: sys.argv[1:] if None)."""
    return run_command(CLI, argv, _train, (SettingError,), log)


if __name__ == "__main__":
    # Run the importable poc59.train, not this __main__ copy: submitit pickles the task
    # function by reference, which only works for a function of an importable module.
    from poc59.train import main as _main

    sys.exit(_main())

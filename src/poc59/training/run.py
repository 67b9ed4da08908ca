"""One training run from the composed config (conf/train.yaml): `train(cfg)`.

Instantiates data, network, loss, optimizer, scheduler, callbacks, loggers and
trainer, fits, and writes the run's summary.json. The only place where
`poc59.data` and `poc59.model` meet. `python -m poc59.train` is its command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from poc59.analysis.curves import training_curves_figure
from poc59.artifacts.card import ModelCard
from poc59.artifacts.trained import best_checkpoint
from poc59.core.atomic import write_bytes, write_json
from poc59.core.classes import ClassTable
from poc59.core.config import SettingError, plain
from poc59.core.device import peak_memory
from poc59.core.locks import FolderLock
from poc59.core.logs import log_console
from poc59.core.outputs import UNWRITABLE, check_writable, refusal
from poc59.core.provenance import git_commit, package_versions
from poc59.core.threads import set_threads
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.sources import DataError
from poc59.metrics import registry
from poc59.metrics.confusion import metric_convention
from poc59.model.factory import (
    MissingWeightsError,
    UnknownEncoderError,
    check_image_size,
    count_parameters,
    normalization,
)
from poc59.model.metrics import first_class_baseline
from poc59.model.module import SegmentationModule
from poc59.model.pretrained import init_from_checkpoint
from poc59.tracking import record as tracking
from poc59.tracking.tracked import trackers
from poc59.training import resume
from poc59.training.checkpointing import AtomicCheckpointIO
from poc59.training.distributed import first_process
from poc59.training.epoch_log import EpochLog
from poc59.training.loss import build_loss, describe_loss
from poc59.training.preflight import check_settings
from poc59.training.throughput import CONVENTION as THROUGHPUT_CONVENTION
from poc59.training.throughput import TrainThroughput

log = logging.getLogger("poc59.train")  # the command's name in the log

USER_ERRORS = (DataError, MissingWeightsError, UnknownEncoderError, resume.ResumeConfigError, SettingError)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """One object per entry of a callbacks/logger group (entries without _target_ are skipped)."""
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def _plugins() -> list[Any]:
    """Atomic checkpoints; under submitit, submitit owns requeue (it re-runs this job, which resumes)."""
    plugins: list[Any] = [AtomicCheckpointIO()]
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def _auto_flag(value: Any, key: str, auto: bool = True) -> bool | None:
    """true / false, or None for `auto` (where `auto` is allowed): the device decides."""
    if isinstance(value, bool):
        return value
    if auto and str(value).lower() == "auto":
        return None
    raise SettingError(f"{key}={value}: choose {'auto, ' if auto else ''}true or false")


def model_card(cfg: DictConfig, classes: ClassTable, geometry: dict) -> ModelCard:
    """The model card of the network `cfg.model` builds (its `encoder` and `decoder`) for `classes` at `geometry`
    (no scores yet). Its `network` is what `poc59.model.factory.build_network` rebuilds it from."""
    enc, dec = cfg.model.encoder, cfg.model.decoder
    network = {
        "name": enc.name,
        "decoder": dec.name,
        "num_classes": classes.num_classes,
        "kwargs": plain(enc.get("kwargs")),
        "decoder_kwargs": plain(dec.get("kwargs")),
    }
    return ModelCard(
        classes=classes,
        normalization=normalization(enc.name),
        network=network,
        geometry=dict(geometry),
        input_multiple=int(enc.input_multiple),
        family=enc.get("family"),
    )


def record_hydra(run_dir: Path, config_yaml: str) -> None:
    """Hydra's record of this start, <run>/.hydra/{config,hydra,overrides}.yaml, as Hydra writes it, but
    after the run may start (conf/train.yaml sets hydra.output_subdir=null so Hydra itself does not)."""
    if not HydraConfig.initialized():
        return  # called as a library, not through Hydra
    hydra = HydraConfig.get()
    folder = run_dir / ".hydra"
    write_bytes(folder / "config.yaml", config_yaml.encode())
    write_bytes(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})).encode())
    write_bytes(folder / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task).encode())


SIGTERM_EXIT = 128 + 15  # a job ended by SIGTERM (SLURM's preemption, time limit, scancel), as a shell reports it


def check_run_folder(folder: Path) -> None:
    """SettingError, before anything is written, when `folder` is a non-empty folder that is not a poc59 run
    or cannot be written (read-only, full, not permitted: `poc59.core.outputs.check_writable`)."""
    resume.check_not_foreign(folder)
    check_writable(folder, "run_dir", SettingError)


def _run_folder_error(err: OSError, run_dir: Path) -> SettingError | None:
    """The SettingError for a write into the run folder that its file system refused (read-only, full, no
    permission); None for any other OSError (a bug, or another file's: it keeps its traceback)."""
    if err.errno not in UNWRITABLE:
        return None
    if err.filename is not None:
        inside = Path(os.path.abspath(err.filename)).is_relative_to(os.path.abspath(run_dir))
    else:  # a write that names no file (fsync): the run folder's, if its file system is full or read-only
        try:
            fs = os.statvfs(run_dir)
            inside = bool(fs.f_flag & os.ST_RDONLY) or fs.f_bavail * fs.f_frsize < 1 << 20
        except OSError:
            inside = False
    return SettingError(refusal(run_dir, "run_dir", err)) if inside else None


def train(cfg: DictConfig) -> dict:
    """Fit one model as configured; returns (and on rank 0 writes) the run summary, and sets cfg.paths.run_dir
    to the folder it used (another than the one asked for under resume=never).

    The first process of the run holds the run folder's lock (`poc59.core.locks`) from before the first
    write to the end: a second training started in the same folder is refused, naming the first."""
    started = time.perf_counter()
    # Denormal floats appear as small models train from scratch and make CPU arithmetic
    # 3-10x slower (measured: 9.8 -> 34.8 images/s on the quickstart); flushing them to
    # zero changes no result that matters and does nothing on GPUs.
    torch.set_flush_denormal(True)
    check_settings(cfg)  # everything that can be checked without the data, before any of it is touched
    devices = cfg.trainer.get("devices")
    on_cpu = str(cfg.trainer.get("accelerator")) == "cpu" and isinstance(devices, int)
    threads = set_threads(cfg.get("threads", "auto"), processes=devices if on_cpu else 1)  # CPU DDP: shared
    given = OmegaConf.to_yaml(cfg)  # the composed config, as Hydra records it
    L.seed_everything(cfg.seed, workers=True)
    run_dir, ckpt_path = resume.plan(cfg, Path(cfg.paths.run_dir))
    lock = FolderLock(run_dir, "training") if first_process() else None  # the other ranks are the same run
    try:
        if lock is not None:
            lock.acquire()
        return _train(cfg, run_dir, ckpt_path, started, threads, given)
    except OSError as err:
        refused = _run_folder_error(err, run_dir)
        if refused is None:
            raise
        raise refused from None
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, run_dir: Path, ckpt_path: str | None, started: float, threads: Any, given: str) -> dict:
    """`train` once the run folder is planned and held."""
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)  # loggers and checkpoints follow a resume=never move

    channels_last = _auto_flag(cfg.module.channels_last, "module.channels_last")  # checked before any data is touched
    compile_net = _auto_flag(cfg.module.compile, "module.compile", auto=False)

    datamodule: SegmentationDataModule = instantiate(cfg.data)
    if ckpt_path is not None and (run_dir / "split.json").is_file() and datamodule.split_file is None:
        datamodule.split_file = run_dir / "split.json"  # a resumed run keeps its images, whatever made them
    datamodule.prepare_data()
    datamodule.setup("fit")
    classes = datamodule.classes

    enc = cfg.model.encoder
    check_image_size(datamodule.image_size, enc.input_multiple, enc.name)
    geometry = {"policy": datamodule.policy, "image_size": datamodule.image_size, "max_side": datamodule.max_side}
    commit = git_commit()
    card = model_card(cfg, classes, geometry).with_provenance(
        run_dir=str(run_dir), seed=cfg.seed, git_commit=commit, packages=package_versions()
    )
    net = instantiate(cfg.model, num_classes=classes.num_classes)
    if cfg.get("init_from") and ckpt_path is None:  # a resume restores the run's own weights instead
        source = init_from_checkpoint(net, cfg.init_from, card.network, card.classes.to_dict())
        card = card.with_provenance(init_from=str(source.resolve()))
    loss = build_loss(cfg.loss, datamodule.class_weights)  # the class weights if it takes them
    module_of = instantiate(  # the LightningModule; its objects are built here, not from config values
        cfg.module,
        _partial_=True,
        channels_last=channels_last,
        compile=compile_net,
        compile_options=plain(cfg.module.get("compile_options")),
    )
    module: SegmentationModule = module_of(
        net,
        loss,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        card=card.to_dict(),
    )
    callbacks = instantiate_all(cfg.get("callbacks"))
    bar = bool(cfg.trainer.get("enable_progress_bar", True))
    if bar and not log_console().is_terminal:  # a SLURM log, a pipe: the epoch lines, not wrapped bar fragments
        log.info("stderr is not a terminal: no progress bar; one line per epoch in the log")
        bar = False
    if not bar:  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # this run's own checkpoint (real paths: ckpt_path= is resolved, the run folder may be a link)
    own = ckpt_path is not None and Path(os.path.realpath(ckpt_path)).is_relative_to(os.path.realpath(run_dir))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_all(cfg.get("logger")),
        plugins=_plugins(),
        enable_progress_bar=bar,
    )

    if trainer.is_global_zero:  # only now, after every check that can refuse: a refused start changes no record
        record_hydra(run_dir, given)
        write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        write_json(run_dir / "split.json", datamodule.split)
        write_json(run_dir / "class_weights.json", datamodule.class_weights_record)
        log.info("Run folder: %s", run_dir)
        log.info("%s", network_line(cfg.model, net, trainer))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for tracker in trackers(trainer.loggers):  # after the run may start: a refused start opens no tracked run
            tracker.begin(tracking.params(resolved), tracking.tags(resolved, run_dir, datamodule.split, commit))

    throughput = next((c for c in callbacks if isinstance(c, TrainThroughput)), None)
    if throughput is not None:
        throughput.attempt_start = started
    with warnings.catch_warnings():
        if own:  # resuming in place: the checkpoint folder holds this run's checkpoints, as it should
            warnings.filterwarnings(
                "ignore",  # Lightning names the folder by its real path (a symlinked run folder)
                message=rf"Checkpoint directory {re.escape(os.path.realpath(run_dir))}\S* exists and is not empty",
            )
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            log.warning(
                "Stopped by SIGTERM (preemption, a time limit or scancel) in epoch %d at step %d; %s holds the last "
                "completed epoch. Continue with:\n  %s",
                trainer.current_epoch,
                trainer.global_step,
                resume.last_checkpoint(run_dir),
                resume_command(run_dir),
            )
            raise SystemExit(SIGTERM_EXIT) from None

    kept = _finished_already(run_dir, ckpt_path, throughput)
    if kept is not None:
        return kept
    monitor = registry.check_monitor(cfg.get("monitor"))
    best = registry.best_entry(module.history, monitor)
    baseline = first_class_baseline(datamodule.val_masks, classes.num_classes, classes.ignore_index)
    ckpt = trainer.checkpoint_callback
    summary = {
        "encoder": enc.name,
        "decoder": cfg.model.decoder.name,
        "family": enc.get("family"),
        "parameters": count_parameters(net),
        "image_size": datamodule.image_size,
        "classes": classes.to_dict(),
        "epochs_run": trainer.current_epoch,
        "monitor": monitor,  # the metric that picked best_epoch (and best.ckpt)
        "best_epoch": best["epoch"] if best else None,
        # every registered metric at the best epoch: val/mIoU, val/IoU (per class), ...
        **{f"val/{m.name}": best.get(m.name) if best else None for m in registry.METRICS.values()},
        f"baseline_val/{registry.headline().name}": baseline,
        "baseline": f"predicting class 0 ({classes.names[0]}) everywhere on the same validation images, same "
        "convention: a model must beat it to have learned anything",
        "metric_convention": metric_convention(),
        "train_images_per_s": throughput.images_per_second() if throughput else None,
        "train_images_per_s_convention": THROUGHPUT_CONVENTION,
        "peak_memory": peak_memory(trainer.strategy.root_device),
        # all the training that happened: earlier attempts (to their last checkpoint) and this one
        "wall_time_s": round(throughput.elapsed_s() if throughput else time.perf_counter() - started, 2),
        "checkpoint": {
            "best": ckpt.best_model_path if ckpt else None,
            "last": str(resume.last_checkpoint(run_dir)) if resume.last_checkpoint(run_dir).exists() else None,
        },
        "history": module.history,
        "provenance": {
            "loss": describe_loss(loss, cfg.loss),  # class_weights_applied: whether it took them
            "class_weights": datamodule.class_weights_record,
            "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
            "scheduler": OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
            "batch_size_per_device": datamodule.batch_size,
            "devices": trainer.world_size,
            "precision": str(trainer.precision),
            "model": {  # how the network ran, as resolved on this device
                "channels_last": module.runs_channels_last,
                "compile": compile_net,
                "compile_options": plain(cfg.module.get("compile_options")),
            },
            "seed": cfg.seed,
            "threads": threads,  # PyTorch's CPU threads: results are reproducible at one count
            "encoder_weights": enc.weights,
            "data": datamodule.describe(),
            "git_commit": commit,
            "packages": package_versions(),
        },
    }
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        write_json(run_dir / "model_card.json", card.to_dict())  # the card every checkpoint of the run carries
        epochs = next((c for c in callbacks if isinstance(c, EpochLog)), None)
        if epochs is not None and epochs.rows:
            training_curves_figure(
                epochs.rows,
                run_dir / "training_curves.png",
                f"{run_dir.name}: {enc.name} + {cfg.model.decoder.name}",
                baseline=summary[f"baseline_val/{registry.headline().name}"],
                best_epoch=summary["best_epoch"],
                first_class=classes.names[0],
            )
        point_latest(run_dir)
        for tracker in trackers(trainer.loggers):
            tracker.complete(final_figures(summary), tracking.files_of(run_dir))
        _report(summary, run_dir)
    return summary


def network_line(model: DictConfig, net: torch.nn.Module, trainer: L.Trainer) -> str:
    """What trains, on what: the encoder and decoder (the `model` node), the parameters, the weights, the
    devices, the precision."""
    enc = model.encoder
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    weights = enc.weights if enc.weights not in (None, "null") else "random initialisation (encoder.weights=null)"
    return (
        f"Network: {enc.name} + {model.decoder.name}, {count_parameters(net) / 1e6:.2f} M parameters, encoder weights "
        f"{weights}; {trainer.world_size} x {name}, precision {trainer.precision}"
    )


def final_figures(summary: dict) -> dict[str, float]:
    """What a tracker gets at the end of a run: every registered metric at the best epoch (`best/val/<name>`,
    per class `best/val/<name>/<class>`), the best epoch and the baseline (None left out)."""
    head = registry.headline().name
    figures: dict[str, Any] = {"best/epoch": summary["best_epoch"]}
    for m in registry.METRICS.values():
        value = summary.get(f"val/{m.name}")
        if m.per_class:
            figures.update({f"best/val/{m.name}/{n}": v for n, v in (value or {}).items()})
        else:
            figures[f"best/val/{m.name}"] = value
    figures.update(
        {
            f"baseline_val/{head}": summary.get(f"baseline_val/{head}"),
            "train_images_per_s": summary["train_images_per_s"],
            "wall_time_s": summary["wall_time_s"],
        }
    )
    return {k: float(v) for k, v in figures.items() if v is not None}


def _finished_already(run_dir: Path, ckpt_path: str | None, throughput: TrainThroughput | None) -> dict | None:
    """The run's summary as it was, when this attempt resumed a finished run and trained no step (a rerun,
    requeue or relaunch of it): its figures describe the training that happened, so they are kept."""
    summary = run_dir / "summary.json"
    if ckpt_path is None or throughput is None or throughput.steps > 0 or not summary.is_file():
        return None
    log.info("%s is already trained to the end: nothing to do; summary.json is kept as it was", run_dir)
    return json.loads(summary.read_text())


def point_latest(run_dir: Path) -> None:
    """<runs folder>/latest, a link to the newest finished run (replaced atomically), for runs under a
    `runs/` folder (outputs/runs/<name>); sweeps and explicit run_dir= elsewhere are left alone."""
    if run_dir.parent.name != "runs":
        return
    link, tmp = run_dir.parent / "latest", run_dir.parent / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:  # a file system without links: the log still names the folder
        log.warning("Could not point %s at %s: %s", link, run_dir, err)


def _report(summary: dict, run_dir: Path) -> None:
    """A few plain lines at the end of a run: what it scored (every registered metric at the best epoch),
    against what, and what to run next."""
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f} %"
    names, epoch = summary["classes"]["names"], summary["best_epoch"]
    monitor = summary.get("monitor") or f"val/{registry.headline().name}"
    head = f"val/{registry.headline().name}"
    log.info("Best %s %s at epoch %s (%s)", monitor, fmt(summary.get(monitor)), epoch, summary["metric_convention"])
    others = [m for m in registry.split_metrics() if f"val/{m.name}" != monitor and f"val/{m.name}" in summary]
    if others:
        log.info("At that epoch: %s", ", ".join(f"{m.label} {fmt(summary[f'val/{m.name}'])}" for m in others))
    score, base = summary.get(head), summary.get(f"baseline_{head}")
    ratio = f"; the model scores {score / base:.2f}x that" if score is not None and base else ""
    log.info("Predicting %s everywhere on the same validation set scores %s %s%s", names[0], head, fmt(base), ratio)
    for m in registry.class_metrics():
        values = summary.get(f"val/{m.name}") or {}
        shown = [f"{n} {'absent' if values.get(n) is None else fmt(values[n])}" for n in names[1:]]
        log.info(
            "Val %s of every class but %s, at the best epoch (%s): %s",
            m.label,
            names[0],
            epoch,
            ", ".join(shown) or "none",
        )
    iou = summary.get(f"val/{registry.class_metrics()[0].name}") or {}
    scored = [(iou[n], n) for n in names[1:] if iou.get(n) is not None]  # the class table's order
    if scored:
        best = sorted(scored, key=lambda vn: -vn[0])  # stable: ties stay in the table's order
        log.info("Best classes: %s", ", ".join(f"{n} {fmt(v)}" for v, n in best[:3] if v > 0) or "none above 0")
        log.info("Missed (IoU 0): %s", ", ".join(n for v, n in scored if v == 0) or "none")
    ips = summary["train_images_per_s"]
    log.info(
        "Training throughput: %s images/s (%s)",
        f"{ips:.1f}" if ips else "n/a",
        summary["train_images_per_s_convention"],
    )
    log.info("Summary: %s", run_dir / "summary.json")
    log.info("Run folder: %s (training curves: training_curves.png)", run_dir)
    best = best_checkpoint(run_dir)
    q = shlex.quote
    log.info(
        "Next:\n  python -m poc59.evaluate %s\n  python -m poc59.predict %s input=<images> output=<folder>"
        "\n  python -m poc59.export %s\n  %s   # resumes it; add trainer.max_epochs=N for more",
        q(f"run_dir={run_dir}"),  # these commands read a value as it is (poc59.core.cli): no Hydra quoting
        q(f"ckpt={best}"),
        q(f"run_dir={run_dir}"),
        resume_command(run_dir),
    )


def hydra_quoted(value: str) -> str:
    """`value` as a Hydra override value: as it is when Hydra reads it so (letters, digits, / . _ + -),
    else double-quoted (spaces, non-ASCII, commas, colons...)."""
    if re.fullmatch(r"[A-Za-z0-9_/.+-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resume_command(run_dir: Path) -> str:
    """The command that continues this run, ready to paste in a shell: this start's overrides, each key once
    with its last value (Hydra's rule), and run_dir= this folder, each argument shell-quoted."""
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    last: dict[str, str] = {}
    for override in given:
        key = override.split("=", 1)[0].lstrip("+~")
        if key != "run_dir":
            last.pop(key, None)  # each key once, where it was last given
            last[key] = override
    return shlex.join(["python", "-m", "poc59.train", *last.values(), f"run_dir={hydra_quoted(str(run_dir))}"])

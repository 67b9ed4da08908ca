"""Every setting of a training run that can be checked without the data, checked before any data is touched.

A run that would stop at its first batch, or train nothing, or fail on a missing weights file after the
set was generated and decoded, stops here instead: one `SettingError` naming the key and the fix (the
command exits 2). `check_settings(cfg)` is the whole check; `train` calls it first.
"""

from __future__ import annotations

import difflib
import inspect
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from lightning.pytorch.accelerators import AcceleratorRegistry, MPSAccelerator
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, OmegaConf

from poc59.core.classes import load_class_table
from poc59.core.config import SettingError, error_text, plain
from poc59.data.decoding import POLICIES
from poc59.data.masks import check_mask_remap
from poc59.data.sources import check_root
from poc59.data.split import check_fractions
from poc59.metrics import registry
from poc59.model.factory import WeightsMismatchError, check_image_size, check_network
from poc59.model.pretrained import init_from_file
from poc59.training.loss import check_loss

GROUPS = (
    "data",
    "encoder",
    "decoder",
    "model",
    "module",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
)  # one object each
FAMILIES = ("callbacks", "logger")  # a mapping of objects each
BACKENDS = ("nccl", "gloo", "mpi", "ucc")  # torch.distributed process group backends
LOCAL_LAUNCHERS = ("BasicLauncher", "LocalLauncher", "JoblibLauncher")  # Hydra launchers that run jobs here
SEED_MAX = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything passes on
STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "deepspeed", "single_device", "dp"}


def check_settings(cfg: DictConfig) -> None:
    """Raise SettingError for the first setting of `cfg` that cannot work (see the module docstring)."""
    check_arguments(cfg)
    data, enc, dec = cfg.data, cfg.model.encoder, cfg.model.decoder
    root = Path(str(data.root)).expanduser()
    if not data.get("synthetic"):  # the built-in set is generated into its root on first use
        check_root(root)
    # the class table (classes.json, ARTeFACT's without one): what the loss is called with, nothing else read
    check_loss(cfg.loss, _user_value(load_class_table, root))
    image_size = _integer(data.image_size, "data.image_size", minimum=1)
    _integer(data.batch_size, "data.batch_size", minimum=1)
    _user_value(check_image_size, image_size, int(enc.input_multiple), enc.name)
    _user_value(check_fractions, float(data.val_fraction), float(data.get("test_fraction", 0.0)))
    if data.policy not in POLICIES:
        raise SettingError(f"data.policy={data.policy}: choose one of {', '.join(POLICIES)}")
    if data.policy == "crop":
        check_crop(data.get("max_side"), image_size, int(enc.input_multiple))
    check_cross_validation(data)
    rare = (data.get("crop_sampling") or {}).get("rare_fraction") or 0
    if isinstance(rare, bool) or not isinstance(rare, int | float) or not 0 <= rare <= 1:
        raise SettingError(
            f"data.crop_sampling.rare_fraction={rare}: the share of windows placed over rare classes, 0 to 1"
        )
    check_seed(cfg.get("seed"))
    if cfg.get("init_from"):
        init_from_file(cfg.init_from)
    threads = cfg.get("threads", "auto")
    if str(threads).lower() != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SettingError(f"threads={threads}: choose auto or a whole number of CPU threads, at least 1")
    if data.get("on_bad_file", "error") not in ("error", "skip"):
        raise SettingError(f"data.on_bad_file={data.on_bad_file}: choose error or skip")
    check_mask_remap(data.get("mask_remap"))
    lr = float(cfg.optimizer.lr)
    if not math.isfinite(lr) or lr <= 0:
        raise SettingError(
            f"optimizer.lr={cfg.optimizer.lr}: the learning rate must be a positive number "
            f"(at {lr} the weights {'never change' if lr == 0 else 'do not learn'}); each encoder preset sets its "
            "recommended one (conf/encoder/<preset>.yaml)"
        )
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and int(max_epochs) == 0:
        raise SettingError("trainer.max_epochs=0 trains nothing: set 1 or more (or -1 with trainer.max_steps)")
    _check_trainer_names(cfg.trainer)
    check_monitor(cfg)
    if _runs_here(cfg):
        check_accelerator(cfg.trainer)
    _user_value(
        check_network,
        enc.name,
        dec.name,
        enc.weights,
        cfg.model.get("weights_dir"),
        plain(enc.get("kwargs")),
        plain(dec.get("kwargs")),
    )


def check_arguments(cfg: DictConfig) -> None:
    """Every key of an object the config builds is an argument of its class (`+data.imgae_size=128` is a
    typo, not a new setting), with the closest argument suggested."""
    nodes = [(g, cfg.get(g)) for g in GROUPS]
    nodes += [(f"{f}.{k}", v) for f in FAMILIES for k, v in (cfg.get(f) or {}).items()]
    for key, node in nodes:
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            target = get_object(node._target_) if "." in node._target_ else None  # a class or a function
        except Exception as err:
            raise SettingError(f"{key}._target_={node._target_}: cannot be imported ({error_text(err)})") from None
        if target is not None and not callable(target):
            raise SettingError(f"{key}._target_={node._target_}: names no class or function to build it with")
        params = inspect.signature(target).parameters if target is not None else {}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for name in node:
            if name.startswith("_") or name in params:
                continue
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {key}.{close[0]}?" if close else ""
            if not close and key == "loss":  # a key of the preset whose class was replaced
                hint = "; another loss class starts from loss=custom, which holds no preset's keys: add loss=custom"
            takes = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL]
            raise SettingError(
                f"{key}.{name}: {node._target_} takes no argument {name!r} (it takes: {', '.join(takes)}){hint}"
            )


def check_cross_validation(data: DictConfig) -> None:
    """data.cv: K folds or a metadata column (not both), a fold that exists, and no data.split_file beside it."""
    cv = data.get("cv") or {}
    folds, by, fold, floor = (cv.get(k) for k in ("folds", "by", "fold", "min_images"))
    if folds is None and by is None:
        return
    if folds is not None and by is not None:
        raise SettingError(
            f"data.cv.folds={folds} and data.cv.by={by} are two kinds of cross-validation: keep one "
            "(folds=K: K stratified folds; by=<metadata column>: one fold per value) and set the other to null"
        )
    if data.get("split_file"):
        raise SettingError(
            f"data.split_file={data.split_file} fixes one split, and data.cv makes the folds: set one of them to null"
        )
    if folds is not None:
        k = _integer(folds, "data.cv.folds", minimum=2)
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < k:
            raise SettingError(f"data.cv.fold={fold}: with data.cv.folds={k}, pick a fold 0 to {k - 1}")
    else:
        if not isinstance(by, str) or not by.strip():
            raise SettingError(f"data.cv.by={by}: name a metadata.csv column, e.g. data.cv.by=material")
        if isinstance(fold, bool) or not isinstance(fold, int | str) or (isinstance(fold, int) and fold < 0):
            raise SettingError(f"data.cv.fold={fold}: a fold index (0, 1, ...) or a value of {by}")
    if floor is not None:
        _integer(floor, "data.cv.min_images", minimum=1)


def check_crop(max_side: Any, image_size: int, input_multiple: int) -> None:
    """data.policy=crop cuts data.image_size windows from sources stored at a long side of data.max_side:
    that side is a whole number, at least one window."""
    if max_side is None or max_side == "":
        raise SettingError("data.policy=crop needs data.max_side (the long side sources are stored at, e.g. 1024)")
    side = _integer(max_side, "data.max_side", minimum=1)
    if side >= image_size:
        return
    fits = side // input_multiple * input_multiple
    smaller = f", or data.image_size={fits} (windows that fit)" if fits >= input_multiple else ""
    raise SettingError(
        f"data.max_side={side} is below data.image_size={image_size}: data.policy=crop cuts {image_size} px "
        f"windows from sources stored at a long side of data.max_side. Set data.max_side={image_size} or more "
        f"(e.g. data.max_side={max(1024, image_size)}){smaller}"
    )


def check_seed(seed: Any) -> None:
    """seed: null (Lightning picks one and logs it) or a whole number numpy takes, 0 to 2**32 - 1."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise SettingError(f"seed={seed}: choose a whole number from 0 to {SEED_MAX} (numpy's range), e.g. seed=0")


def check_accelerator(trainer: DictConfig) -> None:
    """trainer.accelerator=gpu|cuda|mps on a machine that has that device, and no more CUDA devices asked
    for than it has (Lightning would stop with a traceback, after the data was read)."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = MPSAccelerator.is_available()
    if (accelerator == "cuda" and not cuda) or (accelerator == "gpu" and not (cuda or mps)):
        raise SettingError(
            f"trainer.accelerator={trainer.accelerator}: this machine has no GPU that PyTorch can use "
            f"(torch.cuda.is_available() is False): use trainer.accelerator=cpu (or auto), or run where a GPU is"
        )
    if accelerator == "mps" and not mps:
        raise SettingError(f"trainer.accelerator={trainer.accelerator}: no Apple GPU (MPS) here: use cpu or auto")
    devices = trainer.get("devices", "auto")
    if accelerator in ("gpu", "cuda") and cuda and isinstance(devices, int) and not isinstance(devices, bool):
        if devices > cuda:
            raise SettingError(
                f"trainer.devices={devices}: this machine has {cuda} CUDA GPU{'s' if cuda > 1 else ''}: "
                f"set trainer.devices={cuda} or fewer (or -1 for all)"
            )


def _runs_here(cfg: DictConfig) -> bool:
    """Whether the job of `cfg` runs on this machine: a sweep checked before Hydra's launcher submits it to
    a cluster (the config of the command line, with its hydra node) runs elsewhere, and is checked there."""
    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None, throw_on_missing=False)
    return launcher is None or str(launcher).rsplit(".", 1)[-1] in LOCAL_LAUNCHERS


def _check_trainer_names(trainer: DictConfig) -> None:
    accelerator = trainer.get("accelerator", "auto")
    known = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    if isinstance(accelerator, str) and accelerator not in known:
        raise SettingError(f"trainer.accelerator={accelerator}: choose one of {', '.join(sorted(known))}")
    strategy = trainer.get("strategy", "auto")
    backend = strategy.get("process_group_backend") if isinstance(strategy, DictConfig) else None
    if backend is not None and backend not in BACKENDS:
        raise SettingError(
            f"trainer.strategy.process_group_backend={backend}: choose {', '.join(BACKENDS)} "
            "(nccl on NVIDIA GPUs, gloo on CPUs), or leave it out and Lightning picks"
        )
    known = STRATEGIES | set(StrategyRegistry.available_strategies())
    if isinstance(strategy, str) and strategy not in known:
        close = difflib.get_close_matches(strategy, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (e.g. ddp)"
        raise SettingError(f"trainer.strategy={strategy}: Lightning knows no such strategy{hint}")


def _integer(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < minimum:
        raise SettingError(f"{key}={value}: must be a whole number >= {minimum}")
    return int(value)


def _user_value(check: Any, *args: Any) -> Any:
    """Run a library check whose ValueError is the user's setting (its message names the key and fix); its
    answer."""
    try:
        return check(*args)
    except SettingError:
        raise
    except WeightsMismatchError as err:  # a file the user gave (encoder.weights) that is not its encoder's
        raise SettingError(str(err)) from None
    except ValueError as err:
        if type(err) is not ValueError and not isinstance(err, SettingError):
            raise  # UnknownEncoderError & co: user errors of their own kind (the command exits 2)
        raise SettingError(str(err)) from None


def check_monitor(cfg: DictConfig) -> None:
    """The setting `monitor` (the validation metric that picks the best epoch), checked: a registered split
    metric, and the one the best checkpoint is kept by (a checkpoint callback told another would keep a
    best.ckpt that summary.json and compare do not call best)."""
    monitor = registry.check_monitor(cfg.get("monitor"))
    kept = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=monitor)
    if kept != monitor:
        raise SettingError(
            f"callbacks.model_checkpoint.monitor={kept} but monitor={monitor}: the best epoch is chosen by one "
            f"setting; pass monitor={kept} instead (and leave callbacks.model_checkpoint.monitor to follow it)"
        )

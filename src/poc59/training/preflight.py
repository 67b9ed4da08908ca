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

from hydra.utils import get_class, get_method
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig

from poc59.core.config import SettingError, plain
from poc59.data.preload import POLICIES
from poc59.data.sources import check_root
from poc59.data.split import check_fractions
from poc59.model.factory import check_image_size, check_network

GROUPS = ("data", "loss", "optimizer", "scheduler", "trainer")  # one object each
FAMILIES = ("callbacks", "logger")  # a mapping of objects each
BACKENDS = ("nccl", "gloo", "mpi", "ucc")  # torch.distributed process group backends
STRATEGIES = {"auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "deepspeed", "single_device", "dp"}


def check_settings(cfg: DictConfig) -> None:
    """Raise SettingError for the first setting of `cfg` that cannot work (see the module docstring)."""
    check_arguments(cfg)
    data, enc = cfg.data, cfg.encoder
    if not data.get("synthetic"):  # the built-in set is generated into its root on first use
        check_root(Path(str(data.root)).expanduser())
    image_size = _integer(data.image_size, "data.image_size", minimum=1)
    _integer(data.batch_size, "data.batch_size", minimum=1)
    _user_value(check_image_size, image_size, int(enc.input_multiple), enc.name)
    _user_value(check_fractions, float(data.val_fraction), float(data.get("test_fraction", 0.0)))
    if data.policy not in POLICIES:
        raise SettingError(f"data.policy={data.policy}: choose one of {', '.join(POLICIES)}")
    if data.policy == "crop" and not data.get("max_side"):
        raise SettingError("data.policy=crop needs data.max_side (the long side sources are stored at, e.g. 1024)")
    check_cross_validation(data)
    rare = (data.get("crop_sampling") or {}).get("rare_fraction") or 0
    if isinstance(rare, bool) or not isinstance(rare, int | float) or not 0 <= rare <= 1:
        raise SettingError(
            f"data.crop_sampling.rare_fraction={rare}: the share of windows placed over rare classes, 0 to 1"
        )
    threads = cfg.get("threads", "auto")
    if str(threads).lower() != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SettingError(f"threads={threads}: choose auto or a whole number of CPU threads, at least 1")
    if data.get("on_bad_file", "error") not in ("error", "skip"):
        raise SettingError(f"data.on_bad_file={data.on_bad_file}: choose error or skip")
    lr = float(cfg.optimizer.lr)
    if not math.isfinite(lr) or lr <= 0:
        raise SettingError(
            f"optimizer.lr={cfg.optimizer.lr}: the learning rate must be a positive number "
            f"(at {lr} the weights {'never change' if lr == 0 else 'do not learn'}); the preset's is encoder.lr"
        )
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and int(max_epochs) == 0:
        raise SettingError("trainer.max_epochs=0 trains nothing: set 1 or more (or -1 with trainer.max_steps)")
    _check_trainer_names(cfg.trainer)
    _user_value(
        check_network,
        enc.name,
        enc.decoder,
        enc.weights,
        cfg.paths.weights_dir,
        plain(enc.get("kwargs")),
        plain(enc.get("decoder_kwargs")),
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
            target = get_class(node._target_) if "." in node._target_ else None
        except Exception:  # a function target, or one that does not import
            try:
                target = get_method(node._target_)
            except Exception as err:
                raise SettingError(f"{key}._target_={node._target_}: cannot be imported ({err})") from None
        params = inspect.signature(target).parameters if target is not None else {}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for name in node:
            if name.startswith("_") or name in params:
                continue
            close = difflib.get_close_matches(name, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {key}.{close[0]}?" if close else ""
            raise SettingError(f"{key}.{name}: {node._target_} takes no argument {name!r}{hint}")


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


def _user_value(check: Any, *args: Any) -> None:
    """Run a library check whose ValueError is the user's setting (its message names the key and fix)."""
    try:
        check(*args)
    except SettingError:
        raise
    except ValueError as err:
        if type(err) is not ValueError and not isinstance(err, SettingError):
            raise  # UnknownEncoderError & co: user errors of their own kind (the command exits 2)
        raise SettingError(str(err)) from None

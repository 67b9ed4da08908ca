"""The real composed config (conf/train.yaml, as `python -m poc59.train` composes it), the LightningModule
poc59.train builds from it, and a run trained from it in this process: what the model benchmarks measure, so
none of them builds its own copy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from poc59.core.classes import ClassTable
from poc59.core.overrides import compose_train
from poc59.model.factory import build_network
from poc59.model.module import SegmentationModule
from poc59.training.run import model_card, train


def train_config(*overrides: str, run_dir: Path | None = None) -> DictConfig:
    """conf/train.yaml with `overrides`; `run_dir` is where loggers would write (else left to Hydra's run folder)."""
    return compose_train(overrides, run_dir=run_dir)


def segmentation_module(cfg: DictConfig, classes: ClassTable, class_weights: torch.Tensor) -> SegmentationModule:
    """Network (cfg.encoder), loss (cfg.loss with `class_weights`), AdamW and OneCycle factories, as poc59.train
    joins them. Seed first for the same initial weights on every call."""
    size = cfg.data.image_size
    card = model_card(
        cfg, classes, {"policy": cfg.data.policy, "image_size": size, "max_side": cfg.data.get("max_side")}
    )
    net = build_network(**card.network, weights=cfg.encoder.weights, weights_dir=cfg.paths.weights_dir)
    return SegmentationModule(
        net,
        instantiate(cfg.loss, class_weights=class_weights),
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        card=card.to_dict(),
    )


def train_here(overrides: Sequence[str], run_dir: Path, cache: str | Path) -> dict:
    """The run `POC59_CACHE=<cache> python -m poc59.train <overrides> run_dir=<run_dir>` makes, trained in this
    process: the same composed config and `train`, the same files in `run_dir` (summary.json, config.yaml,
    class_weights.json, checkpoints), without the interpreter start, which costs about 10 s of CPU on a 2-core
    machine. For --quick runs, whose figures only prove the harness; a figure that is a time, or a check of the
    command itself, keeps a fresh process. Returns the run's summary; torch's thread count (a run sets its own,
    `threads=`) and POC59_CACHE are as they were afterwards."""
    threads, cache_before = torch.get_num_threads(), os.environ.get("POC59_CACHE")
    os.environ["POC59_CACHE"] = str(cache)
    try:
        return train(compose_train(overrides, run_dir=run_dir))
    finally:
        torch.set_num_threads(threads)
        if cache_before is None:
            os.environ.pop("POC59_CACHE")
        else:
            os.environ["POC59_CACHE"] = cache_before

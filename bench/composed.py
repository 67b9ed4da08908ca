"""The real composed config (conf/train.yaml, as `python -m poc59.train` composes it) and the LightningModule
poc59.train builds from it: what the model benchmarks measure, so none of them builds its own copy."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from poc59.core.classes import ClassTable
from poc59.core.config import config_dir, register_resolvers
from poc59.model.factory import build_network
from poc59.model.module import SegmentationModule
from poc59.training.run import model_card


def train_config(*overrides: str, run_dir: Path | None = None) -> DictConfig:
    """conf/train.yaml with `overrides`; `run_dir` is where loggers would write (else left to Hydra's run folder)."""
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
    return cfg


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

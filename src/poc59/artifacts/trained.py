"""A trained model, ready to use after training: load a checkpoint (or an exported model).

evaluate, predict and export all start here, so they agree on what a model is:
a `Segmenter` (uint8 RGB images [B, 3, H, W] in, float32 logits [B, C, H, W]
out, normalisation inside) plus what training recorded about it (class table,
normalisation, geometry, network). A checkpoint is self-contained: nothing else
from the run is needed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from poc59.artifacts.card import CardError, ModelCard
from poc59.core.classes import ClassTable
from poc59.model.factory import build_network
from poc59.model.segmenter import Segmenter, network_state

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "TrainedModel", "best_checkpoint", "checkpoint_identity", "load_checkpoint", "scored_this"]


class ModelLoadError(ValueError):
    """A model file that is missing, unreadable or not poc59's (the message names it and the fix)."""


@dataclass
class TrainedModel:
    """A model plus its card (what training recorded about it).

    `segmenter` maps uint8 [B, 3, H, W] to logits [B, C, H, W]: a `Segmenter` for checkpoints, or another
    callable with the same contract (e.g. an ONNX session wrapper) for exported models. `source` is the file
    it came from; `run_dir` the training run folder when the file sits in one (run/checkpoints/x.ckpt).
    """

    segmenter: Callable[[torch.Tensor], torch.Tensor]
    card: ModelCard
    source: Path
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> ClassTable:
        return self.card.classes

    @property
    def normalization(self) -> dict[str, list[float]]:
        return self.card.normalization

    @property
    def geometry(self) -> dict[str, Any]:
        """{"policy": resize | pad | crop, "image_size": int, "max_side": int | None}."""
        return self.card.geometry

    @property
    def network(self) -> dict[str, Any]:
        return self.card.network

    @property
    def image_size(self) -> int:
        return self.card.image_size


def best_checkpoint(run_dir: str | Path) -> Path:
    """The run's best checkpoint, the one file every command (evaluate, export, predict, compare) uses for
    `run_dir=`: the file its summary.json records (by name, in this run's own checkpoints/ folder: a moved or
    copied run names its own), else checkpoints/best.ckpt.

    Training keeps one best.ckpt per run (poc59.training.checkpointing.RunCheckpoint); runs trained before it
    may have recorded a best-v1.ckpt written beside an older best.ckpt by a resume, and that is their best.
    """
    folder = Path(run_dir) / "checkpoints"
    try:
        recorded = (json.loads((Path(run_dir) / "summary.json").read_text()).get("checkpoint") or {}).get("best")
    except (OSError, ValueError, AttributeError):  # no summary yet (a run still training), or not readable
        recorded = None
    if recorded and (folder / Path(recorded).name).is_file():
        return folder / Path(recorded).name
    return folder / "best.ckpt"


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """What tells one checkpoint file from another written later in its place: its name, size and modification
    time (ns). Training replaces a checkpoint whole (a new file each time: poc59.training.checkpointing), and
    `cp -a` of a run keeps all three, so a copied run's evaluations stay its own."""
    stat = Path(path).stat()
    return {"name": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_runs_best(model: TrainedModel, run: Path | None, summary: dict[str, Any]) -> bool:
    """Whether `model` is `run`'s best checkpoint, whose scores its `summary` (summary.json) records: the file
    `best_checkpoint` names, at the run's best epoch (a file of that name from another epoch is not)."""
    return (
        run is not None
        and model.source.name == best_checkpoint(run).name
        and summary.get("best_epoch") == model.extra.get("epoch")
    )


def scored_this(record: dict[str, Any], path: str | Path, epoch: int | None) -> bool:
    """Whether an evaluation (its metrics.json `record`) scored the checkpoint now at `path`: by the identity it
    recorded, or, for evaluations written before identities were recorded, by file name and `epoch`."""
    recorded = record.get("checkpoint_identity")
    if recorded is not None:
        return Path(path).is_file() and recorded == checkpoint_identity(path)
    return Path(record.get("checkpoint") or "").name == Path(path).name and record.get("checkpoint_epoch") == epoch


def _run_dir_of(ckpt: Path) -> Path | None:
    run = ckpt.parent.parent
    return run if ckpt.parent.name == "checkpoints" and (run / "config.yaml").exists() else None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the network of a poc59 Lightning checkpoint (weights from the file; no hub, no data).

    Checkpoints of every poc59 version load: those from before the model card through
    `ModelCard.from_checkpoint`, those from before the Segmenter through `network_state`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file (a run keeps them in <run>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, or not a torch file at all
        raise ModelLoadError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    try:
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CardError("no state_dict")
        run_dir = _run_dir_of(path)
        card = ModelCard.from_checkpoint(ckpt, run_encoder=_run_encoder(run_dir))
    except CardError as e:
        raise ModelLoadError(
            f"{path}: not a poc59 training checkpoint ({e}); pass a checkpoint written by python -m poc59.train"
        ) from None
    net = build_network(**card.network, weights=None)
    state = network_state(ckpt["state_dict"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not match the recorded network {card.network['name']}: {e}") from None
    segmenter = Segmenter(net, card.normalization["mean"], card.normalization["std"]).to(device).eval()
    return TrainedModel(
        segmenter=segmenter,
        card=card,
        source=path,
        run_dir=run_dir,
        extra={"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
    )


def _run_encoder(run_dir: Path | None) -> dict[str, Any]:
    """The encoder section of the run's config.yaml ({} without a run folder)."""
    if run_dir is None:
        return {}
    return (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("encoder") or {}

"""A trained model, ready to use after training: load a checkpoint (or an exported model).

evaluate, predict and export all start here, so they agree on what a model is:
a `Segmenter` (uint8 RGB images [B, 3, H, W] in, float32 logits [B, C, H, W]
out, normalisation inside) plus what training recorded about it (class table,
normalisation, geometry, network). A checkpoint is self-contained: nothing else
from the run is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poc59.core.classes import ClassTable
from poc59.model.factory import build_network

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "Segmenter", "TrainedModel", "load_checkpoint"]


class ModelLoadError(ValueError):
    """A model file that is missing, unreadable or not poc59's (the message names it and the fix)."""


class Segmenter(nn.Module):
    """uint8 (or 0-255 float) RGB [B, 3, H, W] -> float logits [B, C, H, W]; normalisation inside.

    The same arithmetic as SegmentationModule.forward, as a plain nn.Module that
    exports to ONNX/TorchScript with the normalisation in the graph.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        """`mean`/`std` on the 0-1 scale (as recorded in the checkpoint)."""
        super().__init__()
        self.net = net
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.net(x)


@dataclass
class TrainedModel:
    """A model plus what training recorded about it.

    `segmenter` maps uint8 [B, 3, H, W] to logits [B, C, H, W]: a `Segmenter` for
    checkpoints, or another callable with the same contract (e.g. an ONNX session
    wrapper) for exported models. `geometry` is {"policy": resize|pad|crop,
    "image_size": int, "max_side": int|None}. `source` is the file it came from;
    `run_dir` the training run folder when the file sits in one (run/checkpoints/x.ckpt).
    """

    segmenter: Callable[[torch.Tensor], torch.Tensor]
    classes: ClassTable
    normalization: dict[str, list[float]]
    geometry: dict[str, Any]
    network: dict[str, Any]
    source: Path
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.geometry["image_size"])


def _run_dir_of(ckpt: Path) -> Path | None:
    run = ckpt.parent.parent
    return run if ckpt.parent.name == "checkpoints" and (run / "config.yaml").exists() else None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the network of a poc59 Lightning checkpoint (weights from the file; no hub, no data)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file (a run keeps them in <run>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, or not a torch file at all
        raise ModelLoadError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "network" not in hp or "classes" not in hp or "state_dict" not in ckpt:
        raise ModelLoadError(
            f"{path}: not a poc59 training checkpoint (no network/classes hyperparameters); "
            "pass a checkpoint written by python -m poc59.train"
        )
    network = dict(hp["network"])
    net = build_network(**network, weights=None)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not match the recorded network {network['name']}: {e}") from None
    geometry = dict(hp.get("geometry") or {"policy": "resize", "image_size": hp.get("image_size"), "max_side": None})
    segmenter = Segmenter(net, hp["normalization"]["mean"], hp["normalization"]["std"]).to(device).eval()
    return TrainedModel(
        segmenter=segmenter,
        classes=ClassTable.from_dict(hp["classes"]),
        normalization=dict(hp["normalization"]),
        geometry=geometry,
        network=network,
        source=path,
        run_dir=_run_dir_of(path),
        extra={"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")},
    )

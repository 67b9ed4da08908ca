"""Exported models (ONNX, TorchScript) back as a TrainedModel, so predict and evaluate need not know the format.

An exported file carries only the network; what training recorded (classes,
normalisation, geometry, network) comes from the model card beside it
(`model.onnx`, its int8 `model.int8.onnx` and `model.pt` -> `model.card.json`, written by
`python -m poc59.export`).
The returned `segmenter` keeps the checkpoint's contract: uint8 RGB [B, 3, H, W]
in, float32 logits [B, C, H, W] out (on the input's device), normalisation inside.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poc59.artifacts.card import ModelCard
from poc59.artifacts.trained import ModelLoadError, TrainedModel

__all__ = [
    "INSTALL_HINT",
    "INT8_SUFFIX",
    "OnnxSegmenter",
    "card_path",
    "jit_load",
    "load_onnx",
    "load_torchscript",
    "read_card",
]

INSTALL_HINT = 'pip install -e ".[export]"'
CARD_SUFFIX = ".card.json"
INT8_SUFFIX = ".int8.onnx"  # the int8 model beside its fp32 one: model.onnx -> model.int8.onnx


def card_path(model_path: str | Path) -> Path:
    """`model.onnx`, `model.int8.onnx` and `model.pt` share `model.card.json`."""
    path = Path(model_path)
    if path.name.endswith(INT8_SUFFIX):
        path = path.with_name(path.name[: -len(INT8_SUFFIX)])
    return path.with_suffix(CARD_SUFFIX)


def read_card(model_path: str | Path) -> tuple[ModelCard, dict[str, Any]]:
    """(the ModelCard, the whole card file's data) beside an exported model; a clear error when it is
    missing or not a poc59 card."""
    path = card_path(model_path)
    if not path.is_file():
        raise ModelLoadError(
            f"{path}: no model card beside {Path(model_path).name}. poc59 needs it for the classes, normalisation "
            "and geometry: keep the card that python -m poc59.export wrote next to the model, or export again"
        )
    try:
        data = json.loads(path.read_text())
        return ModelCard.from_dict(data), data
    except (OSError, ValueError) as e:  # CardError is a ValueError
        raise ModelLoadError(f"{path}: not a poc59 model card ({e}); export the model again") from None


class OnnxSegmenter:
    """An onnxruntime session behind the Segmenter contract (uint8 tensor in, float32 logits tensor out)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"the exported model takes uint8 RGB images [B, 3, H, W] (0-255), got {images.dtype}")
        x = np.ascontiguousarray(images.detach().cpu().numpy())
        logits = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(logits).to(images.device)


def jit_load(path: str | Path, device: str | torch.device) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation notice (TorchScript still loads and runs in the supported torch range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(f"running ONNX models needs onnxruntime, an optional extra: {INSTALL_HINT}") from None
    return onnxruntime


def _trained(
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    card: tuple[ModelCard, dict],
    path: Path,
    fmt: str,
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """Check the model's output channels against the card's classes (one small forward), then wrap both."""
    model_card, data = card
    side = model_card.input_multiple
    try:
        with torch.no_grad():
            channels = segmenter(torch.zeros((1, 3, side, side), dtype=torch.uint8, device=device)).shape[1]
    except Exception as e:
        raise ModelLoadError(
            f"{path}: the model does not run on a {side}x{side} uint8 image ({type(e).__name__}: {e})"
        ) from None
    if channels != model_card.classes.num_classes:
        raise ModelLoadError(
            f"{path}: the model outputs {channels} channels but its card {card_path(path).name} lists "
            f"{model_card.classes.num_classes} classes; the card belongs to another model: export again"
        )
    return TrainedModel(
        segmenter=segmenter, card=model_card, source=path, run_dir=None, extra={"format": fmt, "card": data}
    )


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such {what} file (python -m poc59.export writes it)")
    return path


def load_onnx(path: str | Path) -> TrainedModel:
    """An ONNX export through onnxruntime (CUDA provider when available, else CPU)."""
    path = _existing(path, "ONNX model")
    card = read_card(path)
    ort = _onnxruntime()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # truncated or not ONNX
        raise ModelLoadError(f"{path}: cannot be read as an ONNX model ({type(e).__name__}: {e})") from None
    return _trained(OnnxSegmenter(session), card, path, "onnx_int8" if path.name.endswith(INT8_SUFFIX) else "onnx")


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A TorchScript export (torch.jit.load) on `device`."""
    path = _existing(path, "TorchScript model")
    card = read_card(path)
    try:
        module = jit_load(path, device)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot be read as a TorchScript model ({type(e).__name__}: {e})") from None
    return _trained(module, card, path, "torchscript", device)

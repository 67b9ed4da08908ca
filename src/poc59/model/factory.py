"""Segmentation networks: an smp architecture (decoder) on any smp or timm encoder, weights from files only.

The config's `model` group builds one with `build_model(encoder=Encoder(...), decoder=Decoder(...))`, the
`encoder` and `decoder` groups giving the two parts (conf/encoder/<preset>.yaml, conf/decoder/<name>.yaml).
`build_network("tu-convnext_tiny", "Unet", weights="imagenet")`, what a checkpoint's model card rebuilds, builds `smp.Unet` with
`encoder_weights=None` (never downloads), then loads the encoder from poc59's weight
cache (see `pretrained.py`; fill it with `python -m poc59.weights fetch encoder=<preset>`),
from a file path, or leaves it randomly initialised (`weights=None`).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from poc59.core.config import plain
from poc59.model.encoders import UnknownEncoderError, check_encoder_name
from poc59.model.pretrained import (
    IMAGENET,
    MissingWeightsError,
    WeightsMismatchError,
    cached_weights_path,
    check_weights_file,
    load_encoder_weights,
    missing_weights_message,
)

__all__ = [
    "DECODERS",
    "Decoder",
    "Encoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MissingWeightsError",
    "UnknownEncoderError",
    "WeightsMismatchError",
    "build_model",
    "build_network",
    "check_encoder_name",
    "check_image_size",
    "count_parameters",
    "normalization",
]

log = logging.getLogger(__name__)

DECODERS = ("Unet", "FPN", "UPerNet", "Segformer")
"""smp architectures poc59 builds (decoder.name), matched case-insensitively."""

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# smp's own encoders whose ImageNet weights expect other input statistics (smp < 0.5 listed them; 0.5+
# keeps them in hub config files, which training does not read).
_SMP_NORMALIZATION = {
    "inceptionv4": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "inceptionresnetv2": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "xception": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "dpn": ([124 / 255, 117 / 255, 104 / 255], [1 / (0.0167 * 255)] * 3),
}


def _no_hub() -> None:
    """Training never waits on the network: make any hub call fail at once (HF_HUB_OFFLINE=1 unless set)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    constants = sys.modules.get("huggingface_hub.constants")  # read at import: update it if already imported
    if constants is not None and os.environ["HF_HUB_OFFLINE"].strip().lower() in ("1", "true", "yes", "on"):
        constants.HF_HUB_OFFLINE = True


def _architectures() -> dict[str, type[nn.Module]]:

    return {name.lower(): getattr(smp, name) for name in DECODERS}


def _architecture(decoder: str) -> type[nn.Module]:
    architectures = _architectures()
    key = str(decoder).lower()
    if key not in architectures:
        raise ValueError(
            f"Unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)} (decoder=<name> picks one: conf/decoder/)"
        )
    return architectures[key]


def _check_kwargs(arch: type[nn.Module], name: str, kwargs: dict, decoder_kwargs: dict) -> None:
    params = set(inspect.signature(arch.__init__).parameters) - {"self", "kwargs"}
    fixed = {"encoder_name", "encoder_weights", "classes"}
    accepted = sorted(params - fixed)
    wrong = sorted(set(decoder_kwargs) - set(accepted))
    if wrong:
        raise ValueError(
            f"decoder.kwargs {wrong} are not arguments of smp.{arch.__name__}; it takes {accepted} "
            "(pick the decoder with its own keyword arguments by decoder=<name>, e.g. decoder=unet)"
        )
    if kwargs and not name.startswith("tu-"):
        raise ValueError(
            f"encoder.kwargs {sorted(kwargs)} given for {name}, but only timm (tu-) encoders take keyword "
            "arguments (smp would ignore them): set encoder.kwargs={}"
        )
    clash = sorted(set(kwargs) & params)
    if clash:
        raise ValueError(f"encoder.kwargs {clash} are smp.{arch.__name__} arguments: put them in decoder.kwargs")


@dataclass(frozen=True)
class Encoder:
    """The encoder part of a network (the `encoder` config node): an smp encoder or `tu-<timm model>` by
    `name`; `weights` null (from scratch), imagenet (poc59's weight cache) or a file; `kwargs` for the encoder's
    constructor (timm.create_model); `family` (CNN | ViT | hybrid) as reported in summaries; and the side
    `input_multiple` every input must be a multiple of."""

    name: str
    weights: str | None = None
    family: str | None = None
    input_multiple: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoder:
    """The decoder part of a network (the `decoder` config node): an smp architecture by `name` (`DECODERS`),
    `kwargs` for its constructor (e.g. decoder_channels)."""

    name: str = "Unet"
    kwargs: dict[str, Any] = field(default_factory=dict)


def build_model(
    encoder: Encoder, decoder: Decoder, num_classes: int, weights_dir: str | Path | None = None
) -> nn.Module:
    """The network of the config's `model` node: `decoder` on `encoder` with `num_classes` outputs (the data's
    class table); `build_network` with the two parts' settings."""
    return build_network(
        encoder.name,
        decoder.name,
        weights=encoder.weights,
        num_classes=num_classes,
        weights_dir=weights_dir,
        kwargs=plain(encoder.kwargs),
        decoder_kwargs=plain(decoder.kwargs),
    )


def build_network(
    name: str,
    decoder: str = "Unet",
    weights: str | Path | None = None,
    num_classes: int = 16,
    weights_dir: str | Path | None = None,
    kwargs: dict | None = None,
    decoder_kwargs: dict | None = None,
) -> nn.Module:
    """An smp `decoder` network on encoder `name` with `num_classes` outputs at input resolution.

    weights: None / "null" (from scratch), "imagenet" (poc59's weight cache, `weights_dir` or
    cache_root()/weights; MissingWeightsError naming the fetch command if absent), or a file path
    (.safetensors / .pth: an smp encoder state dict, or a timm checkpoint for tu- encoders).
    Loaded weights are verified tensor by tensor (WeightsMismatchError names the file and what differs).
    kwargs go to the encoder (timm.create_model for tu- encoders), decoder_kwargs to the smp architecture.
    """
    _no_hub()
    kwargs = plain(kwargs)
    decoder_kwargs = plain(decoder_kwargs)
    path = check_network(name, decoder, weights, weights_dir, kwargs, decoder_kwargs)
    arch = _architecture(decoder)
    try:
        net = arch(encoder_name=name, encoder_weights=None, classes=num_classes, **decoder_kwargs, **kwargs)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(
                f"(poc59: building smp.{arch.__name__} on encoder {name} with kwargs={kwargs}, "
                f"decoder_kwargs={decoder_kwargs})"
            )
        raise
    if path is not None:
        load_encoder_weights(net.encoder, path, name, kwargs)
    else:
        log.debug("encoder %s: random initialisation", name)  # training says so (a loaded checkpoint need not)
    return net


def check_network(
    name: str,
    decoder: str = "Unet",
    weights: str | Path | bool | None = None,
    weights_dir: str | Path | None = None,
    kwargs: dict | None = None,
    decoder_kwargs: dict | None = None,
) -> Path | None:
    """What `build_network` checks before it builds anything: the encoder name, the decoder, the keyword
    arguments, and that the weights file exists and fits the encoder as far as its keys and shapes tell
    (`pretrained.check_weights_file`: the tensors are not read). Returns the weights file (None: from scratch).

    UnknownEncoderError, ValueError, MissingWeightsError or WeightsMismatchError name the setting and the fix.
    """
    kwargs, decoder_kwargs = plain(kwargs), plain(decoder_kwargs)
    check_encoder_name(name)
    _check_kwargs(_architecture(decoder), name, kwargs, decoder_kwargs)
    if isinstance(weights, str) and weights.strip().lower() in ("", "null", "none", "scratch"):
        weights = None
    if weights is True or (isinstance(weights, str) and weights.strip().lower() == IMAGENET):
        path = cached_weights_path(name, weights_dir)
        if not path.is_file():
            raise MissingWeightsError(missing_weights_message(name, path, kwargs, weights_dir))
    elif weights is None or weights is False:
        return None
    else:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"encoder.weights={weights!r} is not an existing file (nor null or imagenet).\n"
                "  Use encoder.weights=imagenet (poc59's weight cache), encoder.weights=/path/to/file, "
                "or encoder.weights=null to train from scratch."
            )
    try:
        check_weights_file(path, _encoder_shapes(name, decoder, kwargs, decoder_kwargs), name, kwargs)
    except WeightsMismatchError as err:
        raise WeightsMismatchError(f"encoder.weights={weights}: {err}") from None
    return path


def _encoder_shapes(name: str, decoder: str, kwargs: dict, decoder_kwargs: dict) -> nn.Module:
    """The encoder `build_network` builds (decoder_kwargs such as encoder_depth shape it too), on the meta
    device where it builds there (no memory, a fraction of a second), else on the CPU (encoders that read
    tensor values while they are made, e.g. smp's MiT)."""
    arch = _architecture(decoder)
    try:
        with torch.device("meta"):
            return arch(encoder_name=name, encoder_weights=None, classes=1, **decoder_kwargs, **kwargs).encoder
    except Exception as err:  # any library's refusal of meta tensors
        log.debug("encoder %s does not build on the meta device (%s): building it on the CPU", name, err)
        return arch(encoder_name=name, encoder_weights=None, classes=1, **decoder_kwargs, **kwargs).encoder


def check_image_size(image_size: int, input_multiple: int, name: str) -> None:
    """Raise ValueError unless `image_size` is a positive multiple of the encoder's `input_multiple`."""
    if input_multiple <= 0:
        raise ValueError(f"encoder.input_multiple must be positive, got {input_multiple}")
    if image_size > 0 and image_size % input_multiple == 0:
        return
    lower = max(input_multiple, image_size // input_multiple * input_multiple)
    upper = lower if image_size < input_multiple else lower + input_multiple
    sizes = f"data.image_size={lower}" + (f" or {upper}" if upper != lower else "")
    message = (
        f"data.image_size={image_size} does not fit encoder {name}: it needs a multiple of "
        f"{input_multiple} (encoder.input_multiple). Use {sizes}"
    )
    if "maxvit" in name or "window" in name:
        fit = image_size if image_size > 0 and image_size % 32 == 0 else max(32, image_size // 32 * 32)
        message += (
            f", or a variant whose attention window fits: MaxViT's window is img_size/32 and the input must be "
            f"a multiple of 32 x window, e.g. encoder.kwargs.img_size={fit} encoder.input_multiple={fit} "
            f"data.image_size={fit}"
        )
    raise ValueError(message + ".")


def normalization(name: str) -> dict[str, list[float]]:
    """Input mean/std (0-1 scale RGB) the encoder's pretrained weights expect: {"mean": [...], "std": [...]}.

    tu- encoders: timm's pretrained config (e.g. 0.5/0.5 for maxvit_tiny_tf_384); smp's own encoders:
    ImageNet statistics except the few that differ. Stored in checkpoints so later commands need nothing else.
    """
    if name.startswith("tu-"):
        try:
            cfg = get_pretrained_cfg(name[3:])
        except Exception:
            cfg = None
        mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
        if mean and std and len(mean) == 3 and len(std) == 3:
            return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    else:
        for prefix, (mean, std) in _SMP_NORMALIZATION.items():
            if name.startswith(prefix):
                return {"mean": list(mean), "std": list(std)}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)

"""Which encoders exist: poc59's presets (conf/encoder) and the names smp and timm know.

Shared by the network factory and the weight cache (neither needs the other for this).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
from omegaconf import OmegaConf
from segmentation_models_pytorch.encoders import is_equivalent_to_timm_universal

from poc59.core.config import config_dir


class UnknownEncoderError(ValueError):
    """An encoder name that is neither an smp encoder nor a timm model."""


def encoder_presets_dir() -> Path:
    """`conf/encoder` (inside the package of a wheel, or at the top of a checkout)."""
    return config_dir(needs="encoder") / "encoder"


def encoder_presets() -> dict[str, dict[str, Any]]:
    """poc59's encoder presets (`conf/encoder/*.yaml`) by preset name, each what it sets: its `encoder` node
    (name, weights, family, input_multiple, kwargs), the decoder it picks (`decoder`: the smp architecture,
    `decoder_kwargs`: conf/decoder/<its option>.yaml's kwargs) and its recommended `batch_size` (data.batch_size)
    and `lr` (optimizer.lr); {} when the configs cannot be found."""
    try:
        folder = encoder_presets_dir()
    except FileNotFoundError:
        return {}
    presets = {}
    for path in sorted(folder.glob("*.yaml")):
        preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        picked = [d["/decoder"] for d in preset.get("defaults", []) if isinstance(d, dict) and "/decoder" in d]
        decoder = (
            OmegaConf.to_container(OmegaConf.load(folder.parent / "decoder" / f"{picked[0]}.yaml")) if picked else {}
        )
        presets[path.stem] = {
            **{k: v for k, v in (preset.get("encoder") or {}).items() if not k.startswith("_")},
            "decoder": decoder.get("name"),
            "decoder_kwargs": decoder.get("kwargs") or {},
            "batch_size": (preset.get("data") or {}).get("batch_size"),
            "lr": (preset.get("optimizer") or {}).get("lr"),
        }
    return presets


def _override_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def encoder_overrides(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """The command-line overrides that select encoder `name` (with `kwargs`): a preset if one matches.

    e.g. "encoder=convnext_tiny", or "encoder=custom encoder.name=tu-resnet34".
    """
    kwargs = dict(kwargs or {})
    presets = encoder_presets()
    preset, preset_kwargs = None, {}
    for preset_name, cfg in presets.items():
        if preset_name != "custom" and cfg.get("name") == name:
            preset, preset_kwargs = preset_name, dict(cfg.get("kwargs") or {})
            break
    parts = [f"encoder={preset}"] if preset else [f"encoder=custom encoder.name={name}"]
    for key, value in kwargs.items():
        if preset_kwargs.get(key, object()) != value:
            parts.append(f"encoder.kwargs.{key}={_override_value(value)}")
    return " ".join(parts)


def _presets_hint() -> str:
    presets = encoder_presets()
    lines = [f"encoder={preset} ({cfg.get('name')})" for preset, cfg in presets.items() if preset != "custom"]
    hint = ""
    if lines:
        hint += "poc59's presets: " + ", ".join(lines) + ".\n"
    hint += (
        "Any other encoder: encoder=custom encoder.name=tu-<timm model> (e.g. tu-resnet34; any name from "
        "timm.list_models()) or encoder=custom encoder.name=<smp encoder> (e.g. mit_b2, resnet50; "
        "smp.encoders.get_encoder_names())."
    )
    return hint


def check_encoder_name(name: str) -> None:
    """Raise UnknownEncoderError unless `name` is an smp encoder or `tu-<timm model>`."""

    if not isinstance(name, str) or not name or name == "???":
        raise UnknownEncoderError(f"No encoder name given (encoder.name={name!r}).\n{_presets_hint()}")
    if name.startswith("tu-"):
        base = name[3:]
        if base.startswith("hf-hub:") or timm.is_model(base):
            return
        candidates = ["tu-" + m for m in timm.list_models()]
        reason = f"{base!r} is not a timm model"
    else:
        if name in smp.encoders.encoders or is_equivalent_to_timm_universal(name):
            return
        if timm.is_model(name):
            raise UnknownEncoderError(
                f"Unknown encoder {name!r}: it is a timm model; timm models need the tu- prefix: "
                f"encoder=custom encoder.name=tu-{name}"
            )
        candidates = list(smp.encoders.get_encoder_names())
        reason = "not an smp encoder and not tu-<timm model>"
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.75)
    did_you_mean = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownEncoderError(f"Unknown encoder {name!r}: {reason}.{did_you_mean}\n{_presets_hint()}")

"""poc59's encoder presets (conf/encoder/*.yaml), read as yaml alone: no model library is imported, so the
commands that only name encoders (e.g. `python -m poc59.weights`) answer without waiting for smp and timm."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from poc59.core.config import config_dir


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

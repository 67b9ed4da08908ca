"""Which encoders exist: poc59's presets (conf/encoder) and the names smp and timm know.

Shared by the network factory and the weight cache (neither needs the other for this).
"""

from __future__ import annotations

import difflib

import segmentation_models_pytorch as smp
import timm
from segmentation_models_pytorch.encoders import is_equivalent_to_timm_universal

# The presets are yaml alone (poc59.model.presets, importable without smp and timm); their names stay here too.
from poc59.model.presets import (
    encoder_overrides,  # noqa: F401 (kept importable from here)
    encoder_presets,
    encoder_presets_dir,  # noqa: F401 (kept importable from here)
)


class UnknownEncoderError(ValueError):
    """An encoder name that is neither an smp encoder nor a timm model."""


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

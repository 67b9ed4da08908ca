"""The ModelCard: the one definition of what a poc59 model carries besides its weights.

A checkpoint holds it (in its hyperparameters, key `card`), an exported model has it beside the file
(`model.card.json`, with what the export adds: files, input/output, parity), and every command reads it
through `ModelCard.from_checkpoint` / `ModelCard.from_dict`. Fields:

- classes: the class table (names, palette, ignore label) the model was trained with;
- normalization: `mean`, `std` on the 0-1 scale, applied inside the model;
- network: what rebuilds the network with `build_network` (name, decoder, num_classes, kwargs, decoder_kwargs);
- geometry: how training images were brought to `image_size` (`policy` resize | pad | crop, `max_side`);
- input_multiple: height and width given to the network must be multiples of this (the encoder's stride,
  or 32 x window for MaxViT);
- family: CNN | ViT | hybrid (the encoder preset's), when known;
- metrics: what was measured of these weights (`validation`: the score of the epoch that wrote them;
  export adds the run's `training` summary and `evaluation`s of this file), each with its convention;
- provenance: the run folder, epoch and step, git commit and package versions.

Checkpoints written before the card existed (commit 26ca46b and earlier) kept the same facts as separate
hyperparameters; `from_checkpoint` reads those too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from poc59.core.classes import ClassTable

CARD_VERSION = 2
_REQUIRED = (
    ("geometry", "image_size"),
    ("geometry", "policy"),
    ("normalization", "mean"),
    ("normalization", "std"),
    ("network", "name"),
)


class CardError(ValueError):
    """A model card (or checkpoint) that lacks what poc59 needs; the message names what is missing."""


@dataclass(frozen=True)
class ModelCard:
    """See the module docstring."""

    classes: ClassTable
    normalization: dict[str, list[float]]
    network: dict[str, Any]
    geometry: dict[str, Any]
    input_multiple: int
    family: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.geometry["image_size"])

    def with_metrics(self, **metrics: Any) -> ModelCard:
        return replace(self, metrics={**self.metrics, **metrics})

    def with_provenance(self, **provenance: Any) -> ModelCard:
        return replace(self, provenance={**self.provenance, **provenance})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (what checkpoints and `*.card.json` hold)."""
        return {
            "card_version": CARD_VERSION,
            "classes": self.classes.to_dict(),
            "normalization": {k: list(v) for k, v in self.normalization.items()},
            "network": dict(self.network),
            "geometry": dict(self.geometry),
            "input_multiple": self.input_multiple,
            "family": self.family,
            "metrics": dict(self.metrics),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """A card from `to_dict`'s data, or from an exported card of version 1 (input multiple under `input`)."""
        if not isinstance(d, dict):
            raise CardError(f"a model card is a mapping, got {type(d).__name__}")
        missing = [f"{part}.{key}" for part, key in _REQUIRED if key not in (d.get(part) or {})]
        if "classes" not in d:
            missing.insert(0, "classes")
        if missing:
            raise CardError(f"no {', '.join(missing)}")
        try:
            classes = ClassTable.from_dict(d["classes"])
        except (KeyError, TypeError, ValueError) as e:
            raise CardError(f"classes: {e}") from None
        geometry = {"max_side": None, **d["geometry"]}
        multiple = d.get("input_multiple") or (d.get("input") or {}).get("multiple_of") or geometry["image_size"]
        return cls(
            classes=classes,
            normalization={"mean": list(d["normalization"]["mean"]), "std": list(d["normalization"]["std"])},
            network=dict(d["network"]),
            geometry=geometry,
            input_multiple=int(multiple),
            family=d.get("family") or (d.get("encoder") or {}).get("family"),
            metrics=dict(d.get("metrics") or {}),
            provenance=dict(d.get("provenance") or {}),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], run_encoder: dict[str, Any] | None = None) -> ModelCard:
        """The card of a Lightning checkpoint written by poc59: `hyper_parameters.card`, or, for checkpoints
        from before the card (26ca46b and earlier), the same facts from their separate hyperparameters; what
        those did not record (input multiple, family) comes from `run_encoder`, the encoder section of the
        run's config.yaml, when the checkpoint sits in its run folder (else the tile size, always valid)."""
        hp = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not isinstance(hp, dict):
            raise CardError("no hyperparameters: not a poc59 training checkpoint")
        if "card" in hp:
            return cls.from_dict(hp["card"])
        if "network" not in hp or "classes" not in hp:
            raise CardError("no card (nor network/classes hyperparameters): not a poc59 training checkpoint")
        geometry = dict(
            hp.get("geometry") or {"policy": "resize", "image_size": hp.get("image_size"), "max_side": None}
        )
        encoder = run_encoder or {}
        multiple = encoder.get("input_multiple")
        if not (isinstance(multiple, int) and multiple > 0 and geometry.get("image_size", 0) % multiple == 0):
            multiple = None  # -> the tile size
        return cls.from_dict(
            {
                "classes": hp["classes"],
                "normalization": hp["normalization"],
                "network": hp["network"],
                "geometry": geometry,
                "input_multiple": multiple,
                "family": encoder.get("family"),
                "provenance": {"card": "rebuilt from a checkpoint written before the model card (26ca46b or earlier)"},
            }
        )

"""The one class table: names, ids, palette and the ignore id.

Every place that shows a class name or colour reads it from a `ClassTable`
(the earlier system typed names in two places and printed the wrong ones).
ARTeFACT is the default; a dataset's `classes.json` (a JSON list of names)
overrides names and class count, with a deterministic palette.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

IGNORE_INDEX = 255
"""Label of pixels outside the object: ignored by loss, metrics and weights."""

ARTEFACT_NAMES: tuple[str, ...] = (
    "Clean",
    "Material loss",
    "Peel",
    "Dust",
    "Scratch",
    "Hair",
    "Dirt",
    "Fold",
    "Writing",
    "Cracks",
    "Staining",
    "Stamp",
    "Sticker",
    "Puncture",
    "Burn marks",
    "Lightleak",
)

ARTEFACT_PALETTE: tuple[str, ...] = (
    "#000000",
    "#1CE6FF",
    "#FF34FF",
    "#FF4A46",
    "#008941",
    "#006FA6",
    "#A30059",
    "#FFA500",
    "#7A4900",
    "#0000A6",
    "#63FFAC",
    "#004D43",
    "#8FB0FF",
    "#997D87",
    "#809693",
    "#F6FF1B",
)

IGNORE_COLOUR = "#FFCDF5"
"""Colour of the ignore label 255 (outside the object) in label maps and pictures: a pale pink chosen as the
colour farthest (CIEDE2000) from every ARTeFACT class colour and every generated palette colour (minimum
distance 26 and 29 up to 16 classes), while staying clear of the error map's grey and red
(`poc59.analysis.pictures.ERROR_COLOURS`). `tests/analysis/test_colour.py` holds these distances."""


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def generated_palette(num_classes: int) -> tuple[str, ...]:
    """Distinct, deterministic colours for a non-ARTeFACT class list.

    Class 0 is black (background by convention); the others walk the hue
    circle by the golden ratio so neighbours differ strongly.
    """
    colours = ["#000000"]
    for i in range(1, num_classes):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95 if i % 2 else 0.7)
        colours.append(f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}")
    return tuple(colours[:num_classes])


@dataclass(frozen=True)
class ClassTable:
    """Names and colours of the classes a model predicts, in id order."""

    names: tuple[str, ...]
    palette: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise ValueError(f"a class table needs at least 2 classes, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {list(self.names)}")
        if len(self.palette) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(self.palette)} palette colours")
        if len(self.names) > self.ignore_index:
            raise ValueError(f"{len(self.names)} classes collide with the ignore id {self.ignore_index}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def rgb(self) -> list[tuple[int, int, int]]:
        """Palette as RGB triples, class id order."""
        return [hex_to_rgb(c) for c in self.palette]

    def to_dict(self) -> dict:
        """Plain form stored in checkpoints, summaries and model cards."""
        return {"names": list(self.names), "palette": list(self.palette), "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, d: dict) -> ClassTable:
        return cls(tuple(d["names"]), tuple(d["palette"]), int(d.get("ignore_index", IGNORE_INDEX)))

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> ClassTable:
        """ARTeFACT colours when the names are ARTeFACT's, generated ones otherwise."""
        names = tuple(str(n) for n in names)
        if names == ARTEFACT_NAMES:
            return ARTEFACT
        return cls(names, generated_palette(len(names)))


ARTEFACT = ClassTable(ARTEFACT_NAMES, ARTEFACT_PALETTE)


def load_class_table(root: str | Path) -> ClassTable:
    """The dataset's table: `ROOT/classes.json` if present, else ARTeFACT's."""
    path = Path(root) / "classes.json"
    if not path.exists():
        return ARTEFACT
    try:
        names = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); it must be a list of class names") from err
    if isinstance(names, dict) and "names" in names:
        names = names["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'{path}: must be a JSON list of class names, e.g. ["background", "crack"]')
    try:
        return ClassTable.from_names(names)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err

"""Masks that cannot be right, told apart before a model is trained on them.

- **Lossy formats.** JPEG (and lossy WebP, JPEG-compressed TIFF) store a mask's edges as values between
  its labels: the compression noise would become class ids. A mask in such a format is refused, named
  (`data.on_bad_file=skip` leaves it out, named); the fix is to export the masks as PNG, since converting
  the lossy file keeps its noise. The format is read from each file's header, not its name.
- **A binary export stored as 0/255.** Many binary segmentation tools store the object as 255, which
  poc59 reads as the ignore label: every labelled pixel is then background and the model learns nothing
  (a 100 % baseline). A set whose labelled pixels are all one class while the ignore label covers at
  least `IGNORE_SHARE` of its mask pixels is refused with that likely cause and the fix,
  `data.mask_remap`.
- **`data.mask_remap`** ({stored value: label}) maps mask values as each mask is read, before its labels
  are checked, only when asked: 255 is never turned into a class otherwise. It is part of the preload
  cache key (the cached masks are the mapped ones) and of the run's configuration (resume compares it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from poc59.core.config import SettingError
from poc59.data.sources import DataError, Sample

log = logging.getLogger(__name__)

# A set whose labelled pixels are all one class is refused when the ignore label covers at least this share
# of its masks' pixels (padding added by policy=pad not counted): the mark of a binary mask stored as 0/255.
# Low on purpose: one class teaches a model nothing whatever 255 means, and defects may be sparse (the README's
# sparse set covers 0.03 % of its pixels); below it, nothing hints at 0/255, and the class weights warn instead.
IGNORE_SHARE = 0.0001

_WEBP_CHUNKS_READ = 64  # RIFF chunks walked looking for the image data chunk of a WebP file


def _webp_is_lossy(f: Any) -> bool:
    """Whether an open WebP file (positioned after its 12-byte RIFF header) holds lossy (VP8) image data."""
    for _ in range(_WEBP_CHUNKS_READ):
        head = f.read(8)
        if len(head) < 8:
            return False
        fourcc, size = head[:4], int.from_bytes(head[4:], "little")
        if fourcc == b"VP8 ":
            return True
        if fourcc == b"VP8L":
            return False
        f.seek(size + (size & 1), 1)  # chunks are padded to an even size
    return False


def lossy_format(path: Path) -> str | None:
    """The lossy format a mask file is stored in ("JPEG", "lossy WebP", "JPEG-compressed TIFF"), read from
    its header whatever its name, or None (lossless, or unreadable: reading it later says what is wrong)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            if head[:3] == b"\xff\xd8\xff":
                return "JPEG"
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return "lossy WebP" if _webp_is_lossy(f) else None
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            with Image.open(path) as img:  # the header only
                if img.info.get("compression") in ("jpeg", "tiff_jpeg"):
                    return "JPEG-compressed TIFF"
    except Exception:  # noqa: BLE001 - unreadable here is judged where the pixels are read, in Pillow's words
        return None
    return None


LOSSY_FIX = (
    "Export the masks as PNG (lossless) from the annotation tool: converting these files would keep the "
    "noise their compression added to the labels"
)


def refuse_lossy_masks(samples: Sequence[Sample], on_bad_file: str = "error") -> tuple[list[Sample], list[dict]]:
    """(the pairs whose mask is lossless, the pairs left out): a mask in a lossy format is a DataError naming
    every such file and the fix, or with `on_bad_file=skip` left out, logged and listed."""
    found = [(s, fmt) for s in samples if (fmt := lossy_format(s.mask)) is not None]
    if not found:
        return list(samples), []
    if on_bad_file != "skip":
        lines = [f"  {s.mask} ({fmt})" for s, fmt in found[:10]]
        more = f"\n  ... and {len(found) - 10} more" if len(found) > 10 else ""
        raise DataError(
            f"{len(found)} mask(s) are stored in a lossy format, whose compression noise would become class "
            "labels:\n" + "\n".join(lines) + more + f"\n{LOSSY_FIX} (data.on_bad_file=skip leaves these pairs out)"
        )
    skipped = []
    for s, fmt in found:
        reason = f"{s.mask} is a {fmt} mask: lossy, its compression noise would become labels; export it as PNG"
        log.warning("Skipping %s: %s", s.id, reason)
        skipped.append({"id": s.id, "image": str(s.image), "mask": str(s.mask), "reason": reason})
    bad = {s.id for s, _ in found}
    return [s for s in samples if s.id not in bad], skipped


def check_mask_remap(remap: Mapping[Any, Any] | None) -> dict[int, int]:
    """`data.mask_remap` as {stored value: label}, both 0..255 (null or {} is no remapping); SettingError
    naming the key and the fix otherwise. Which labels are class ids is checked with the class table
    (`remap_lut`)."""
    if remap is None:
        return {}
    if not isinstance(remap, Mapping):
        raise SettingError(
            f"data.mask_remap={remap}: a mapping of stored mask values to labels, e.g. data.mask_remap={{255:1}}"
        )
    out = {}
    for key, value in remap.items():
        k, v = _byte(key), _byte(value)
        if k is None or v is None:
            raise SettingError(
                f"data.mask_remap={dict(remap)}: {key}: {value} is not a pair of mask values 0..255; "
                "write it as data.mask_remap={255:1} (stored value: label)"
            )
        out[k] = v
    return out


def _byte(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if 0 <= number <= 255 else None


def remap_lut(remap: Mapping[int, int] | None, num_classes: int, ignore_index: int) -> np.ndarray | None:
    """The 256-entry table mapping stored mask values to labels, or None without a remap; DataError when
    the remap maps a value to a label that is neither a class id of the table nor the ignore id."""
    remap = check_mask_remap(remap)
    if not remap:
        return None
    bad = {k: v for k, v in remap.items() if v >= num_classes and v != ignore_index}
    if bad:
        raise DataError(
            f"data.mask_remap maps {bad} to labels that are not class ids 0..{num_classes - 1} nor "
            f"{ignore_index} (ignore): map to a class of the class table, or list more classes in ROOT/classes.json"
        )
    lut = np.arange(256, dtype=np.uint8)
    for k, v in remap.items():
        lut[k] = v
    return lut


def describe_remap(remap: Mapping[int, int], names: Sequence[str], ignore_index: int) -> str:
    """'255 -> 1 (crack)': a remap as the log shows it."""

    def label(v: int) -> str:
        return "ignore" if v == ignore_index else (names[v] if v < len(names) else "?")

    return ", ".join(f"{k} -> {v} ({label(v)})" for k, v in sorted(remap.items()))


def single_class_problem(
    totals: Sequence[int] | np.ndarray, names: Sequence[str], ignore_index: int, root: Path | str
) -> str | None:
    """The refusal's text when the masks' labelled pixels are all one class and the ignore label covers at
    least `IGNORE_SHARE` of their pixels (`totals`: pixels per label value 0..255, padding excluded), else
    None."""
    totals = np.asarray(totals, dtype=np.int64)
    labelled = totals[: len(names)]
    present = np.flatnonzero(labelled)
    ignored = int(totals[ignore_index])
    if present.size != 1 or ignored < IGNORE_SHARE * (int(labelled.sum()) + ignored):
        return None
    c = int(present[0])
    other = 1 if c == 0 else 0
    share = ignored / (int(labelled.sum()) + ignored)
    table = "" if len(names) == 2 else ', with ROOT/classes.json listing two classes, e.g. ["background", "crack"]'
    return (
        f"{root}: every labelled pixel of the masks is class {c} ({names[c]}) and {100 * share:.3g} % of their pixels are "
        f"{ignore_index}, the ignore label: a model would learn nothing from them (predicting {names[c]} everywhere "
        f"scores 100 %). This is what a binary mask stored as 0/{ignore_index} looks like (the object saved as "
        f"{ignore_index}). If {ignore_index} marks the object, map it to a class: data.mask_remap={{{ignore_index}:"
        f"{other}}}{table}; if it marks pixels to ignore, the masks need pixels of another class"
    )

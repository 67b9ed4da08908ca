"""Find image/mask pairs in an ARTeFACT-layout folder and say clearly what is wrong.

ROOT/images/<stem>.<png|jpg|jpeg|tif|tiff|bmp|webp> pairs with ROOT/annotations/<stem>.<ext>.
An original and its augmented copies (`<id>_aug1`, ...) form one *group*,
found with `group_pattern`, so a split can keep them on one side.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_GROUP_PATTERN = r"^(?P<group>.+?)_aug\d+$"


class DataError(ValueError):
    """Bad or missing input data; the message names the files and the fix."""


@dataclass(frozen=True)
class Sample:
    """One image/mask pair."""

    id: str
    image: Path
    mask: Path
    group: str
    is_copy: bool
    material: str | None = None


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in found:
                duplicates.append(f"{found[path.stem].name} / {path.name}")
            found[path.stem] = path
    if duplicates:
        raise DataError(f"{folder}: several files share a stem: {', '.join(duplicates[:5])}; keep one of each")
    return found


def metadata_rows(root: str | Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(columns, {id: row}) of ROOT/metadata.csv; ([], {}) without the file or without an `id` column."""
    path = Path(root) / "metadata.csv"
    if not path.is_file():
        return [], {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        if "id" not in columns:
            return columns, {}
        return columns, {row["id"]: row for row in reader if row.get("id")}


def _materials(root: Path) -> dict[str, str]:
    """{id: material} from ROOT/metadata.csv (the split stratifies on it), with a warning when the file
    has no `id` or `material` column."""
    path = root / "metadata.csv"
    if not path.exists():
        return {}
    columns, rows = metadata_rows(root)
    missing = [c for c in ("id", "material") if c not in columns]
    if missing:
        log.warning(
            "%s has no %s column: the split is stratified by rare classes only (columns: %s)",
            path,
            " and no ".join(missing),
            ", ".join(columns) or "none",
        )
        return {}
    return {i: row["material"] for i, row in rows.items()}


def check_root(root: str | Path) -> None:
    """DataError unless `root` is a folder with images/ and annotations/ (the layout, nothing read yet)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder not found: {root.resolve()}\n"
            "Point data.root at a folder with images/ and annotations/ (ARTeFACT layout), "
            "or try the built-in synthetic set: python -m poc59.train experiment=quickstart"
        )
    for sub in (root / "images", root / "annotations"):
        if not sub.is_dir():
            raise DataError(f"{root.resolve()} has no {sub.name}/ folder; expected ROOT/images and ROOT/annotations")


def discover(root: str | Path, group_pattern: str = DEFAULT_GROUP_PATTERN) -> list[Sample]:
    """All pairs under `root`, sorted by id. Raises DataError for a missing folder or an unpaired file."""
    samples, _ = discover_pairs(root, group_pattern)
    return samples


def discover_pairs(
    root: str | Path, group_pattern: str = DEFAULT_GROUP_PATTERN, on_bad_file: str = "error"
) -> tuple[list[Sample], list[dict]]:
    """(all pairs under `root` sorted by id, the files left out). A file without its partner is a DataError,
    or with `on_bad_file=skip` left out, logged and listed ({"id", "image", "mask", "reason"})."""
    root = Path(root)
    check_root(root)
    images_dir, masks_dir = root / "images", root / "annotations"
    images, masks = _by_stem(images_dir), _by_stem(masks_dir)
    if not images and not masks:
        raise DataError(f"{images_dir} and {masks_dir} hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    skipped = []
    if (lonely_images or lonely_masks) and on_bad_file == "skip":
        for stem in lonely_images + lonely_masks:
            image, mask = images.get(stem), masks.get(stem)
            reason = "an image without its mask" if mask is None else "a mask without its image"
            log.warning("Skipping %s: %s (%s)", stem, reason, image or mask)
            skipped.append({"id": stem, "image": str(image or ""), "mask": str(mask or ""), "reason": reason})
            images.pop(stem, None)
            masks.pop(stem, None)
    elif lonely_images or lonely_masks:
        lines = [f"  image without mask: {images[s]}" for s in lonely_images[:10]]
        lines += [f"  mask without image: {masks[s]}" for s in lonely_masks[:10]]
        more = len(lonely_images) + len(lonely_masks) - len(lines)
        raise DataError(
            "unpaired files (each image needs a mask with the same name stem):\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\n(data.on_bad_file=skip leaves them out, each named)"
        )
    pattern = re.compile(group_pattern)
    materials = _materials(root)
    samples = []
    for stem in sorted(images):
        m = pattern.match(stem)
        group = m.group("group") if m else stem
        samples.append(
            Sample(
                id=stem,
                image=images[stem],
                mask=masks[stem],
                group=group,
                is_copy=m is not None,
                material=materials.get(stem) or materials.get(group),
            )
        )
    originals = [x for x in samples if not x.is_copy]
    unknown = [x.id for x in originals if x.material is None]
    if materials and len(unknown) > len(originals) / 2:
        log.warning(
            "%s gives the material of %d of %d source images (not of e.g. %s): the rest are stratified as of "
            "unknown material",
            root / "metadata.csv",
            len(originals) - len(unknown),
            len(originals),
            ", ".join(unknown[:3]),
        )
    return samples, skipped

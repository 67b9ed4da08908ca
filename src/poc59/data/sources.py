"""Find image/mask pairs in an ARTeFACT-layout folder and say clearly what is wrong.

ROOT/images/<stem>.<png|jpg|jpeg|tif|tiff|bmp|webp> pairs with ROOT/annotations/<stem>.<ext>.
An original and its augmented copies (`<id>_aug1`, ...) form one *group*,
found with `group_pattern`, so a split can keep them on one side.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
import shlex
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


def _by_stem(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({stem: file}, {stem: broken link}) of the image files in `folder`; a link whose target is gone is
    listed apart, so that its partner is not reported as a file without one."""
    found: dict[str, Path] = {}
    broken: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if path.is_symlink() and not path.exists():
            broken[path.stem] = path
        elif path.is_file():
            if path.stem in found:
                duplicates.append(f"{found[path.stem].name} / {path.name}")
            found[path.stem] = path
    if duplicates:
        raise DataError(f"{folder}: several files share a stem: {', '.join(duplicates[:5])}; keep one of each")
    return found, broken


def _link_target(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return "?"


METADATA_ENCODINGS = "UTF-8 (with or without a byte-order mark) or UTF-16 with its byte-order mark"


def read_metadata(path: Path) -> str:
    """The text of a metadata.csv: UTF-8 with or without a BOM, or UTF-16 with its BOM; anything else
    (another encoding, a binary file) is a DataError naming the file and the fix."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None
    fix = (
        f'save it as {METADATA_ENCODINGS} (a spreadsheet\'s "CSV UTF-8"), or move it out of '
        f"{path.parent} (the split is then stratified by rare classes only)"
    )
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE starts both
        raise DataError(f"{path} is UTF-32 text, which poc59 does not read: {fix}")
    if data.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text (line {line} holds byte "
            f"0x{data[err.start]:02x}): {fix}"
        ) from None
    if "\0" in text:
        raise DataError(f"{path} is not a CSV text file (it holds NUL bytes): {fix}")
    return text


def metadata_rows(root: str | Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(columns, {id: row}) of ROOT/metadata.csv; ([], {}) without the file or without an `id` column.
    The one reader of that file (see `read_metadata` for the encodings it takes)."""
    path = Path(root) / "metadata.csv"
    if not path.is_file():
        return [], {}
    try:
        reader = csv.DictReader(io.StringIO(read_metadata(path), newline=""))
        columns = list(reader.fieldnames or ())
        if "id" not in columns:
            return columns, {}
        return columns, {row["id"]: row for row in reader if row.get("id")}
    except csv.Error as err:
        raise DataError(f"{path} is not a readable CSV file ({err}); fix the line it names, or move it out") from None


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
    if root.exists() and not root.is_dir():
        parent = root.resolve().parent
        dataset = (parent / "images").is_dir() and (parent / "annotations").is_dir()
        raise DataError(
            f"data.root is a file, not a folder: {root.resolve()}\n"
            + (
                f"Its folder holds images/ and annotations/: data.root={shlex.quote(str(parent))}"
                if dataset
                else "Point data.root at the folder that holds images/ and annotations/ (ARTeFACT layout)"
            )
        )
    if not root.is_dir():
        raise DataError(
            f"data folder not found: {root.resolve()}\n"
            "Point data.root at a folder with images/ and annotations/ (ARTeFACT layout), "
            "or try the built-in synthetic set: python -m poc59.train experiment=quickstart"
        )
    for sub in (root / "images", root / "annotations"):
        if not sub.is_dir():
            raise DataError(f"{root.resolve()} has no {sub.name}/ folder; expected ROOT/images and ROOT/annotations")


def discover_pairs(
    root: str | Path, group_pattern: str = DEFAULT_GROUP_PATTERN, on_bad_file: str = "error"
) -> tuple[list[Sample], list[dict]]:
    """(all pairs under `root` sorted by id, the files left out). A file without its partner is a DataError,
    or with `on_bad_file=skip` left out, logged and listed ({"id", "image", "mask", "reason"})."""
    root = Path(root)
    check_root(root)
    images_dir, masks_dir = root / "images", root / "annotations"
    (images, broken_images), (masks, broken_masks) = _by_stem(images_dir), _by_stem(masks_dir)
    broken = {**broken_masks, **broken_images}  # stem -> the broken link (its partner goes with it)
    if not images and not masks and not broken:
        raise DataError(f"{images_dir} and {masks_dir} hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    lonely_images = sorted(set(images) - set(masks) - set(broken))
    lonely_masks = sorted(set(masks) - set(images) - set(broken))
    skipped = []
    if (lonely_images or lonely_masks or broken) and on_bad_file == "skip":
        for stem in sorted(broken):
            reason = f"{broken[stem]} is a broken link (its target {_link_target(broken[stem])} is gone)"
            image, mask = images.get(stem) or broken_images.get(stem), masks.get(stem) or broken_masks.get(stem)
            log.warning("Skipping %s: %s", stem, reason)
            skipped.append({"id": stem, "image": str(image or ""), "mask": str(mask or ""), "reason": reason})
            images.pop(stem, None)
            masks.pop(stem, None)
        for stem in lonely_images + lonely_masks:
            image, mask = images.get(stem), masks.get(stem)
            reason = "an image without its mask" if mask is None else "a mask without its image"
            log.warning("Skipping %s: %s (%s)", stem, reason, image or mask)
            skipped.append({"id": stem, "image": str(image or ""), "mask": str(mask or ""), "reason": reason})
            images.pop(stem, None)
            masks.pop(stem, None)
    elif broken:
        lines = [f"  {p} -> {_link_target(p)}" for p in list(broken.values())[:10]]
        more = len(broken) - len(lines)
        raise DataError(
            "broken links (each points to a file that is gone):\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nRestore the files they point to, or remove the links and their partners "
            "(data.on_bad_file=skip leaves those pairs out, each named)"
        )
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

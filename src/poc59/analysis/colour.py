"""Label maps to pictures: colours, overlays and legends, all from one ClassTable.

Every picture poc59 draws (evaluate, compare, predict, the TensorBoard overlays)
colours classes here, so a class has the same colour and name everywhere and
the ignore label 255 is never mistaken for a class.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from poc59.core.classes import IGNORE_COLOUR, ClassTable, hex_to_rgb

__all__ = ["colorize", "delta_e2000", "ignore_rgb", "legend", "lookup_table", "overlay", "srgb_to_lab"]

_D65 = np.array([0.95047, 1.0, 1.08883])
_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


def ignore_rgb() -> tuple[int, int, int]:
    """RGB of ignored pixels (label 255, outside the object)."""
    return hex_to_rgb(IGNORE_COLOUR)


def srgb_to_lab(rgb: np.ndarray | tuple[int, int, int]) -> np.ndarray:
    """CIELAB (D65) of sRGB uint8 colours [..., 3] (L in 0..100)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of CIELAB colours [..., 3] (broadcast): about 2.3 is a just-noticeable
    difference, above 20 colours read as different colours (Sharma, Wu and Dalal 2005, their formulas)."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    chromatic = c1 * c2 != 0
    dh = h2 - h1
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chromatic, dh, 0.0)
    d_hue = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    total = h1 + h2
    h_mean = np.where(
        ~chromatic,
        total,
        np.where(np.abs(h1 - h2) <= 180, total / 2, np.where(total < 360, (total + 360) / 2, (total - 360) / 2)),
    )
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    rotation = (
        -np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2)))) * 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    )
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    dl, dc, dhh = (l2 - l1) / s_l, (c2 - c1) / s_c, d_hue / s_h
    return np.sqrt(dl**2 + dc**2 + dhh**2 + rotation * dc * dhh)


def lookup_table(classes: ClassTable) -> np.ndarray:
    """uint8 [256, 3]: row c is class c's colour, row `ignore_index` the ignore colour, others 0."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: classes.num_classes] = np.asarray(classes.rgb(), dtype=np.uint8)
    lut[classes.ignore_index] = ignore_rgb()
    return lut


def _checked_labels(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    """Labels as an index array; a label that is no class and not ignore is an error, never a colour."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a label map [H, W], got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    valid = ((labels >= 0) & (labels < classes.num_classes)) | (labels == classes.ignore_index)
    if not valid.all():
        bad = sorted({int(v) for v in np.unique(labels[~valid])})[:10]
        raise ValueError(
            f"labels {bad} are neither a class id (0..{classes.num_classes - 1}) nor the ignore id "
            f"{classes.ignore_index}: the label map does not belong to this class table"
        )
    return labels.astype(np.intp, copy=False)


def colorize(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    """uint8 [H, W, 3] picture of a label map [H, W] in the table's palette (ignore in IGNORE_COLOUR)."""
    return lookup_table(classes)[_checked_labels(labels, classes)]


def overlay(image: np.ndarray, labels: np.ndarray, classes: ClassTable, alpha: float = 0.5) -> np.ndarray:
    """The image with damage blended in its class colour; Clean (id 0) and ignored pixels stay the image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    labels = _checked_labels(labels, classes)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = image.copy()
    damage = (labels != 0) & (labels != classes.ignore_index)
    colours = lookup_table(classes)[labels[damage]].astype(np.float32)
    out[damage] = np.rint((1.0 - alpha) * image[damage].astype(np.float32) + alpha * colours).astype(np.uint8)
    return out


def legend(classes: ClassTable, present: set[int] | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, rgb) per class in id order, only those in `present` if given; ("ignored", rgb) if 255 is in it."""
    entries = [
        (name, rgb)
        for i, (name, rgb) in enumerate(zip(classes.names, classes.rgb()))
        if present is None or i in present
    ]
    if present is not None and classes.ignore_index in present:
        entries.append(("ignored", ignore_rgb()))
    return entries


PANELS = ("image", "ground truth", "prediction")


def labelled_panels(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, classes: ClassTable, alpha: float = 0.5
) -> np.ndarray:
    """image | ground truth | prediction side by side [H, W, 3] uint8, each panel named above it, and below
    a legend of the classes the truth or the prediction holds (class 0 and ignored pixels drawn as the
    image, so not listed)."""
    panels = np.concatenate(
        [image, overlay(image, truth, classes, alpha), overlay(image, pred, classes, alpha)], axis=1
    )
    h, w = image.shape[:2]
    font = ImageFont.load_default()
    present = (set(np.unique(truth).tolist()) | set(np.unique(pred).tolist())) - {0, classes.ignore_index}
    entries = legend(classes, present)
    line, top = 14, 16
    per_row = max(1, (3 * w) // 130)
    rows = (len(entries) + per_row - 1) // per_row or 1
    canvas = Image.new("RGB", (3 * w, top + h + rows * line + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(panels), (0, top))
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(PANELS):
        draw.text((k * w + 3, 2), name, fill=(0, 0, 0), font=font)
    if not entries:
        draw.text((3, top + h + 2), f"only {classes.names[0]}", fill=(0, 0, 0), font=font)
    for j, (name, rgb) in enumerate(entries):
        x, y = (j % per_row) * 130 + 3, top + h + 2 + (j // per_row) * line
        draw.rectangle((x, y + 2, x + 9, y + 11), fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((x + 13, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)

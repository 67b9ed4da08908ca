"""Drawing helpers for the synthetic set: smooth noise, colour schemes, irregular outlines, and the picture
being painted (`Picture`), whose colours every damage type takes from the pixels underneath."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Low-frequency noise in ~[0, 1], float32 (h, w): a few random values upsampled bicubically."""
    scale = cells / max(h, w)
    cy, cx = max(2, round(h * scale) + 1), max(2, round(w * scale) + 1)
    small = rng.random((cy, cx), dtype=np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """k colours in a harmonious scheme (analogous / complementary / free), float32 (k, 3)."""
    base = rng.random()
    scheme = rng.integers(3)
    if scheme == 0:
        hues = base + rng.normal(0, 0.06, k)
    elif scheme == 1:
        hues = base + rng.integers(0, 2, k) * 0.5 + rng.normal(0, 0.03, k)
    else:
        hues = rng.random(k)
    sats, vals = rng.uniform(0.15, 0.85, k), rng.uniform(0.25, 0.95, k)
    return np.stack([hsv_colour(hh, s, v) for hh, s, v in zip(hues, sats, vals)])


def blob_outline(
    rng: np.random.Generator, cx: float, cy: float, r: float, irr: float, nv: int = 28, aspect: float = 1.0
) -> list[tuple[float, float]]:
    """An irregular closed outline (radius modulated by random harmonics and jitter)."""
    th = np.linspace(0, 2 * np.pi, nv, endpoint=False) + rng.uniform(0, 2 * np.pi / nv)
    rad = np.ones(nv)
    for k in range(2, 7):
        rad += irr * rng.normal() / k * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    rad += irr * 0.2 * rng.standard_normal(nv)
    rad = np.clip(rad, 0.3, None) * r
    rot = rng.uniform(0, np.pi)
    x, y = rad * np.cos(th), rad * np.sin(th) * aspect
    xs = cx + x * math.cos(rot) - y * math.sin(rot)
    ys = cy + x * math.sin(rot) + y * math.cos(rot)
    return list(zip(xs.tolist(), ys.tolist()))


@dataclass
class Picture:
    """One image being painted: float RGB, labels, the object mask and its palette context."""

    img: np.ndarray  # float32 (h, w, 3)
    lab: np.ndarray  # uint8 (h, w)
    obj: np.ndarray  # bool (h, w): inside the artwork
    bbox: tuple[int, int, int, int]  # object's x0, y0, x1, y1
    rng: np.random.Generator
    substrate: np.ndarray  # float32 (3,)
    mount: np.ndarray  # float32 (3,)
    material: str
    content: str

    @property
    def h(self) -> int:
        return self.img.shape[0]

    @property
    def w(self) -> int:
        return self.img.shape[1]

    @property
    def S(self) -> float:  # noqa: N802 - a length scale, like the maths
        x0, y0, x1, y1 = self.bbox
        return math.sqrt((x1 - x0) * (y1 - y0))

    def inside(self) -> tuple[float, float]:
        """A random point on the object."""
        x0, y0, x1, y1 = self.bbox
        for _ in range(30):
            x, y = self.rng.uniform(x0, x1), self.rng.uniform(y0, y1)
            if self.obj[int(y), int(x)]:
                return x, y
        return (x0 + x1) / 2, (y0 + y1) / 2

    def near_edge(self) -> tuple[float, float]:
        """A random point on the object close to its border (where tears start)."""
        x0, y0, x1, y1 = self.bbox
        margin = 0.06 * self.S
        for _ in range(30):
            side = int(self.rng.integers(4))
            t, d = self.rng.random(), self.rng.uniform(0, margin)
            if side < 2:  # left / right
                x, y = (x0 + d if side == 0 else x1 - 1 - d), y0 + t * (y1 - y0 - 1)
            else:  # top / bottom
                x, y = x0 + t * (x1 - x0 - 1), (y0 + d if side == 2 else y1 - 1 - d)
            if self.obj[int(y), int(x)]:
                return x, y
        return self.inside()

    def box(self, xs, ys, pad: float) -> tuple[int, int, int, int] | None:
        """Clipped integer bounding box of points, padded; None if it misses the image."""
        x0 = max(0, int(math.floor(min(xs) - pad)))
        y0 = max(0, int(math.floor(min(ys) - pad)))
        x1 = min(self.w, int(math.ceil(max(xs) + pad)) + 1)
        y1 = min(self.h, int(math.ceil(max(ys) + pad)) + 1)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def paint(
        self,
        cls: int,
        box: tuple[int, int, int, int],
        label: np.ndarray,
        target: Callable[[np.ndarray], np.ndarray],
        alpha: np.ndarray | float = 1.0,
    ) -> None:
        """Blend `target(crop)` into the crop with `alpha` and write `cls` where `label`.

        A scalar alpha only touches the labelled pixels (cheap for thin damage);
        an array alpha blends the whole box (soft stains, leaks, dirt).
        """
        x0, y0, x1, y1 = box
        crop = self.img[y0:y1, x0:x1]
        if np.isscalar(alpha):
            px = crop[label]
            crop[label] = px + float(alpha) * (target(px) - px)
        else:
            crop += alpha[..., None] * (target(crop) - crop)
        self.lab[y0:y1, x0:x1][label] = cls


def blank_layer(box: tuple[int, int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    return img, ImageDraw.Draw(img)


def shifted(points, box) -> list[tuple[float, float]]:
    return [(x - box[0], y - box[1]) for x, y in points]


def local_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)[..., None] * sd

"""The built-in synthetic damage set: an ARTeFACT stand-in that nobody needs to download.

Why: ARTeFACT (418 images, Hugging Face) has to be fetched and exported before
anyone can train; the quickstart, the tests and first-time users need data that
exists offline in seconds. This module paints procedural "artworks" (gradients,
noise, strokes, figures, tiles, line drawings on ten ARTeFACT-like materials)
and draws all 15 ARTeFACT damage types on them, each with its own signature
(thin bright scratches, branching dark cracks, specks of dust, curly hairs,
blotchy stains, torn material loss showing the substrate, shaded folds,
handwriting, round stamps, textured stickers, punctures, burn marks, light
leaks, flaking peel, smudgy dirt). It writes them in the ARTeFACT folder
layout with `<id>_augK` copies (flip / rot90 / colour change), exactly as the
common local export looks, so the same data path serves both.

It is built to be hard in the ways ARTeFACT is hard, so a model that learns
here is not learning a toy:
- imbalance: Clean is ~80 % of labelled pixels; Material loss, Peel and
  Staining are common; Hair, Dust, Burn marks, Puncture, Scratch are thin and
  rare (well under 1 % each);
- no colour coding: damage is tinted from the local image colours (darker,
  lighter, stained versions of what is under it), so colour alone cannot
  separate classes;
- not every image has every type; every type occurs in any set of n >= 15
  originals (image i always carries type i mod 15);
- a 255 (ignore) mount around most objects (slightly rotated / inset /
  irregular frames), non-square sizes of ~300-800 px per side.

Determinism: image i comes from its own `SeedSequence(seed, spawn_key=(i,))`,
so the same (seed, i) gives byte-identical files whatever n is and however
many worker threads run.

    python -m poc59.data.synthetic out=DIR n=60 seed=0 [aug=3]
"""

from __future__ import annotations

import colorsys
import csv
import errno
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.core.cli import Command, Key, run_command
from poc59.core.progress import Steps

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump whenever the pixels change: a cached set with another version is regenerated."""

MARKER = ".complete"
"""Written last (inside the temporary folder, before the rename): its presence means a complete set."""

MATERIALS: tuple[str, ...] = (
    "Parchment",
    "Film emulsion",
    "Glass",
    "Paper",
    "Tesserae",
    "Canvas",
    "Textile",
    "Wood",
    "Ceramic",
    "Lacquer",
)
CONTENTS: tuple[str, ...] = ("Artistic depiction", "Photographic depiction", "Line art", "Geometric patterns")
METADATA_COLUMNS: tuple[str, ...] = ("id", "material", "content", "image_path", "annotation_path", "width", "height")
AUG_KINDS: tuple[str, ...] = ("flip", "rot90", "colour")
"""Copy k (1-based) is of kind AUG_KINDS[(k - 1) % 3]: geometric copies move the mask, colour copies keep it."""

PNG_COMPRESS_LEVEL = 1  # zlib level: the grain makes higher levels barely smaller and 2-4x slower
_CLEAN = ARTEFACT.names.index("Clean")

# Substrate colour under the paint/emulsion: what Material loss, Peel and Puncture rims reveal.
_SUBSTRATE: dict[str, tuple[int, int, int]] = {
    "Parchment": (222, 202, 160),
    "Film emulsion": (205, 205, 192),
    "Glass": (200, 218, 214),
    "Paper": (236, 229, 210),
    "Tesserae": (172, 166, 150),
    "Canvas": (198, 176, 136),
    "Textile": (186, 168, 138),
    "Wood": (150, 106, 66),
    "Ceramic": (196, 128, 88),
    "Lacquer": (128, 88, 56),
}
# Which contents each material tends to carry (weights over CONTENTS).
_CONTENT_WEIGHTS: dict[str, tuple[float, float, float, float]] = {
    "Parchment": (0.5, 0.0, 0.35, 0.15),
    "Film emulsion": (0.1, 0.8, 0.05, 0.05),
    "Glass": (0.3, 0.5, 0.05, 0.15),
    "Paper": (0.35, 0.25, 0.3, 0.1),
    "Tesserae": (0.35, 0.0, 0.0, 0.65),
    "Canvas": (0.8, 0.0, 0.05, 0.15),
    "Textile": (0.3, 0.0, 0.1, 0.6),
    "Wood": (0.6, 0.0, 0.1, 0.3),
    "Ceramic": (0.4, 0.0, 0.2, 0.4),
    "Lacquer": (0.6, 0.0, 0.15, 0.25),
}


# -- small drawing helpers -------------------------------------------------------------------


def _smooth(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Low-frequency noise in ~[0, 1], float32 (h, w): a few random values upsampled bicubically."""
    scale = cells / max(h, w)
    cy, cx = max(2, round(h * scale) + 1), max(2, round(w * scale) + 1)
    small = rng.random((cy, cx), dtype=np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
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
    return np.stack([_hsv(hh, s, v) for hh, s, v in zip(hues, sats, vals)])


def _blob(
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
class _Ctx:
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


def _layer(box: tuple[int, int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    return img, ImageDraw.Draw(img)


def _shift(points, box) -> list[tuple[float, float]]:
    return [(x - box[0], y - box[1]) for x, y in points]


def _local_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)[..., None] * sd


# -- the 15 damage types -----------------------------------------------------------------------
# Each takes the context and draws one or more instances of its type. Colours are always
# derived from the pixels underneath (or the image's own substrate / mount), never fixed.


def _lightleak(c: _Ctx, cls: int) -> None:
    rng = c.rng
    hue = rng.uniform(0.0, 0.13) if rng.random() < 0.7 else rng.uniform(0.85, 1.0)
    colour = _hsv(hue, rng.uniform(0.55, 0.95), 1.0)
    strength = rng.uniform(0.55, 0.9)
    side = int(rng.integers(4))
    across = c.h if side < 2 else c.w
    along = c.w if side < 2 else c.h
    depth = rng.uniform(0.1, 0.35) * across
    extent = min(across, int(depth * 2.2) + 1)
    knots = rng.uniform(0.15, 1.0, (1, 6)).astype(np.float32)  # reach varies smoothly along the edge
    mod = np.clip(np.asarray(Image.fromarray(knots).resize((along, 1), Image.BICUBIC))[0], 0.1, None)
    dist = np.arange(extent, dtype=np.float32)[:, None]
    a = strength * np.exp(-((dist / (depth * mod[None, :] + 1e-3)) ** 1.5))  # (extent, along)
    if side == 1:
        a = a[::-1]
    if side >= 2:
        a = a.T
        if side == 3:
            a = a[:, ::-1]
    if side == 0:
        box = (0, 0, c.w, extent)
    elif side == 1:
        box = (0, c.h - extent, c.w, c.h)
    elif side == 2:
        box = (0, 0, extent, c.h)
    else:
        box = (c.w - extent, 0, c.w, c.h)
    a = np.ascontiguousarray(a, dtype=np.float32)
    c.paint(cls, box, a >= 0.3, lambda x: 255 - (255 - x) * (255 - colour) / 255, alpha=a)


def _staining(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = c.inside()
        r = c.S * rng.uniform(0.05, 0.19)
        pts = _blob(rng, cx, cy, r, irr=0.35, aspect=rng.uniform(0.6, 1.0))
        box = c.box([p[0] for p in pts], [p[1] for p in pts], pad=r * 0.3)
        if box is None:
            continue
        layer, draw = _layer(box)
        draw.polygon(_shift(pts, box), fill=255)
        a = np.asarray(layer.filter(ImageFilter.GaussianBlur(max(1.0, r * 0.12))), np.float32) / 255
        tide = np.exp(-(((a - 0.45) / 0.08) ** 2))
        tint = np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.42, 0.7)], np.float32) * rng.uniform(0.7, 0.92)
        strength = rng.uniform(0.4, 0.8)
        c.paint(cls, box, a >= 0.4, lambda x: x * tint * (1 - 0.25 * tide[..., None]), alpha=a * strength)


def _peel(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.inside()
        big = c.S * rng.uniform(0.08, 0.24)
        box = c.box([cx - 1.7 * big, cx + 1.7 * big], [cy - 1.7 * big, cy + 1.7 * big], pad=1)
        if box is None:
            continue
        fill, dfill = _layer(box)
        for _ in range(int(rng.integers(10, 30))):  # flakes, each lifted by its own amount
            fx, fy = cx + rng.normal(0, 0.55 * big), cy + rng.normal(0, 0.55 * big)
            pts = _shift(_blob(rng, fx, fy, big * rng.uniform(0.15, 0.5), irr=0.7, nv=9), box)
            dfill.polygon(pts, fill=int(rng.integers(90, 256)))
        lift_map = np.asarray(fill, np.float32) / 255
        inside = lift_map > 0
        edge = (np.asarray(fill.filter(ImageFilter.MaxFilter(3))) > 0) & ~inside  # curled rim's shadow
        lift = rng.uniform(0.3, 0.6) * lift_map[inside][:, None]
        sub = c.substrate * 0.5 + 128 * 0.5
        c.paint(cls, box, inside, lambda x: x * (1 - lift) + sub * lift + 12, alpha=0.9)
        c.paint(cls, box, edge, lambda x: x * 0.5, alpha=0.8)


def _material_loss(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.near_edge() if rng.random() < 0.5 else c.inside()
        r = c.S * rng.uniform(0.06, 0.26)
        pts = _blob(rng, cx, cy, r, irr=0.55, nv=40, aspect=rng.uniform(0.5, 1.0))
        box = c.box([p[0] for p in pts], [p[1] for p in pts], pad=3)
        if box is None:
            continue
        layer, draw = _layer(box)
        draw.polygon(_shift(pts, box), fill=255)
        hole = np.asarray(layer) > 0
        rim = (np.asarray(layer.filter(ImageFilter.MaxFilter(5))) > 0) & ~hole
        sub = c.substrate + rng.normal(0, 12, 3).astype(np.float32)
        c.paint(
            cls,
            box,
            hole,
            lambda x: sub + 0.12 * (x - x.mean(0)) + rng.standard_normal((len(x), 1), dtype=np.float32) * 7,
        )
        c.paint(cls, box, rim, lambda x: x * 0.6, alpha=0.7)


def _crack_paths(
    rng: np.random.Generator, x: float, y: float, angle: float, length: float, depth: int, out: list[np.ndarray]
) -> None:
    n = max(3, int(length / 4))
    ang = angle + np.cumsum(rng.normal(0, 0.28, n))
    xs = x + np.cumsum(np.cos(ang) * 4)
    ys = y + np.cumsum(np.sin(ang) * 4)
    out.append(np.stack([xs, ys], 1))
    if depth > 0:
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(n // 4, n))
            turn = rng.uniform(0.4, 1.1) * (1 if rng.random() < 0.5 else -1)
            _crack_paths(rng, xs[j], ys[j], ang[j] + turn, length * rng.uniform(0.3, 0.6), depth - 1, out)


def _cracks(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = c.inside()
        paths: list[np.ndarray] = []
        _crack_paths(rng, cx, cy, rng.uniform(0, 2 * np.pi), c.S * rng.uniform(0.25, 0.7), 3, paths)
        allp = np.concatenate(paths)
        box = c.box(allp[:, 0], allp[:, 1], pad=2)
        if box is None:
            continue
        layer, draw = _layer(box)
        for i, p in enumerate(paths):
            draw.line(
                _shift(p.tolist(), box), fill=255, width=int(rng.integers(2, 4)) if i < 3 else int(rng.integers(1, 3))
            )
        dark = rng.uniform(0.25, 0.5)
        c.paint(cls, box, np.asarray(layer) > 0, lambda x: x * dark, alpha=0.9)


def _fold(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.inside()
        if rng.random() < 0.7:
            theta = rng.integers(2) * np.pi / 2 + rng.normal(0, 0.06)
        else:
            theta = rng.uniform(0, np.pi)
        ux, uy = math.cos(theta), math.sin(theta)
        nx, ny = -uy, ux
        half = c.S * rng.uniform(0.3, 1.2)
        w = rng.uniform(3, 10)
        amp, freq, phase = rng.uniform(0, 4), rng.uniform(0.002, 0.008), rng.uniform(0, 2 * np.pi)
        pad = w + amp + 2
        box = c.box([cx - half * ux, cx + half * ux], [cy - half * uy, cy + half * uy], pad=pad)
        if box is None:
            continue
        X = np.arange(box[0], box[2], dtype=np.float32)[None, :] - cx
        Y = np.arange(box[1], box[3], dtype=np.float32)[:, None] - cy
        t = X * ux + Y * uy
        taper = np.clip((half - np.abs(t)) / (0.15 * half), 0, 1)
        d = X * nx + Y * ny - amp * np.sin(t * freq * 2 * np.pi + phase)
        u = d / (0.5 * w * taper + 1e-3)
        label = np.abs(u) <= 1
        k1, k2 = rng.uniform(0.12, 0.3), rng.uniform(0.1, 0.3)
        factor = (1 + k1 * np.sin(np.pi * np.clip(u, -1, 1)) - k2 * np.exp(-((u / 0.25) ** 2)))[label]
        c.paint(cls, box, label, lambda x: x * factor[:, None])


def _writing(c: _Ctx, cls: int) -> None:
    rng = c.rng
    hx = rng.uniform(3, 8)  # x-height in pixels
    spacing = hx * rng.uniform(2.5, 4)
    x0, y0 = c.inside()
    length = c.S * rng.uniform(0.15, 0.5)
    slant = rng.uniform(-0.1, 0.5)
    strokes: list[np.ndarray] = []
    for line in range(int(rng.integers(1, 6))):
        base = y0 + line * spacing
        x = x0 + rng.uniform(-2, 2) * hx
        while x < x0 + length:
            wl = hx * rng.uniform(2, 7)
            t = np.arange(0, wl, 0.6)
            omega = 2 * np.pi / (hx * rng.uniform(0.7, 1.1))
            amp = np.interp(t, [0, wl / 2, wl], rng.uniform(0.6, 1.4, 3))
            xs = x + t + 0.45 * hx * np.cos(omega * t)
            ys = base - 0.5 * hx * (1 + np.sin(omega * t + 0.5)) * amp
            for _ in range(int(rng.integers(0, 3))):  # ascenders / descenders
                at = rng.uniform(0, wl)
                ys = ys - np.sign(rng.random() - 0.3) * 1.2 * hx * np.exp(-(((t - at) / (0.25 * hx)) ** 2))
            xs = xs + slant * (base - ys)
            strokes.append(np.stack([xs, ys], 1))
            x += wl + hx * rng.uniform(1.2, 2.2)
    allp = np.concatenate(strokes)
    box = c.box(allp[:, 0], allp[:, 1], pad=2)
    if box is None:
        return
    layer, draw = _layer(box)
    width = 2 if hx > 6 else 1
    for s in strokes:
        draw.line(_shift(s.tolist(), box), fill=255, width=width, joint="curve")
    ink = np.array([(55, 38, 20), (28, 30, 72), (22, 22, 22), (105, 78, 48)][int(rng.integers(4))], np.float32)
    ink = ink + rng.normal(0, 10, 3).astype(np.float32)
    c.paint(cls, box, np.asarray(layer) > 0, lambda x: 0.7 * ink + 0.3 * x * 0.5, alpha=rng.uniform(0.7, 0.95))


def _stamp(c: _Ctx, cls: int) -> None:
    rng = c.rng
    cx, cy = c.inside()
    r = rng.uniform(18, 60)
    box = c.box([cx - r, cx + r], [cy - r, cy + r], pad=3)
    if box is None:
        return
    layer, draw = _layer(box)
    lx, ly = cx - box[0], cy - box[1]
    ring = max(1, int(round(r / 14)))
    if rng.random() < 0.75:  # round stamp: two rings, letters between them, a mark in the middle
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], outline=255, width=ring + 1)
        ri = r * rng.uniform(0.62, 0.75)
        draw.ellipse([lx - ri, ly - ri, lx + ri, ly + ri], outline=255, width=ring)
        for a in np.linspace(0, 2 * np.pi, int(rng.integers(10, 22)), endpoint=False):
            rr0, rr1 = ri + 2, r - 2
            for _ in range(int(rng.integers(1, 3))):
                da = rng.uniform(-0.06, 0.06)
                p0 = (lx + rr0 * math.cos(a + da), ly + rr0 * math.sin(a + da))
                p1 = (lx + rr1 * math.cos(a - da), ly + rr1 * math.sin(a - da))
                draw.line([p0, p1], fill=255, width=1)
        for _ in range(int(rng.integers(1, 4))):
            yy = ly + rng.uniform(-0.3, 0.3) * ri
            draw.line([(lx - 0.5 * ri, yy), (lx + 0.5 * ri, yy)], fill=255, width=ring)
    else:  # rectangular stamp: a frame and lines of "text"
        hh = r * rng.uniform(0.4, 0.7)
        draw.rectangle([lx - r, ly - hh, lx + r, ly + hh], outline=255, width=ring + 1)
        for yy in np.arange(ly - hh + 4, ly + hh - 3, 4 + ring):
            xx = lx - r + 4
            while xx < lx + r - 6:
                wl = rng.uniform(3, 10)
                draw.line([(xx, yy), (min(xx + wl, lx + r - 4), yy)], fill=255, width=ring)
                xx += wl + 3
    inked = np.asarray(layer, np.float32) / 255
    bw, bh = box[2] - box[0], box[3] - box[1]
    gaps = _smooth(rng, bh, bw, max(3.0, max(bw, bh) / 6)) > rng.uniform(0.2, 0.4)  # worn ink
    a = inked * gaps * rng.uniform(0.55, 0.9)
    ink = np.array([(175, 40, 45), (40, 62, 150), (110, 52, 128), (35, 35, 40)][int(rng.integers(4))], np.float32)
    c.paint(cls, box, a >= 0.25, lambda x: x * (ink / 255) * 0.85, alpha=a)


def _sticker(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        sw = int(c.S * rng.uniform(0.05, 0.15)) + 8
        sh = int(sw * rng.uniform(0.35, 0.9)) + 4
        paper = _hsv(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.75, 1.0))
        arr = np.empty((sh, sw, 3), np.float32)
        arr[:] = paper
        arr += _local_noise(rng, (sh, sw), 4)
        sticker = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(sticker)
        printed = tuple(int(v) for v in _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.1, 0.5)))
        d.rectangle([1, 1, sw - 2, sh - 2], outline=printed, width=1)
        if rng.random() < 0.4:  # barcode
            for x in range(4, sw - 4):
                if rng.random() < 0.45:
                    d.line([(x, sh * 0.35), (x, sh - 4)], fill=printed)
        for y in range(4, int(sh * 0.5 if rng.random() < 0.4 else sh - 4), 4):  # lines of print
            xx = 4
            while xx < sw - 6:
                wl = int(rng.integers(2, 10))
                d.line([(xx, y), (min(xx + wl, sw - 5), y)], fill=printed)
                xx += wl + 2
        angle = rng.uniform(-15, 15)
        alpha_img = Image.new("L", (sw, sh), 255).rotate(angle, Image.BILINEAR, expand=True)
        sticker = sticker.rotate(angle, Image.BILINEAR, expand=True)
        cx, cy = c.inside()
        bx0, by0 = int(cx - sticker.width / 2), int(cy - sticker.height / 2)
        box = c.box([bx0, bx0 + sticker.width - 1], [by0, by0 + sticker.height - 1], pad=0)
        if box is None:
            continue
        sx0, sy0 = box[0] - bx0, box[1] - by0
        win = (sx0, sy0, sx0 + box[2] - box[0], sy0 + box[3] - box[1])
        s_arr = np.asarray(sticker.crop(win), np.float32)
        s_lab = np.asarray(alpha_img.crop(win)) > 127
        mean_under = c.img[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)
        aged = 0.8 * s_arr[s_lab] + 0.2 * mean_under  # sunlight and grime pull it toward its surroundings
        c.paint(cls, box, s_lab, lambda x: aged)


def _puncture(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 6))):
        cx, cy = c.inside()
        r = rng.uniform(1.5, 5.0)
        box = c.box([cx - r, cx + r], [cy - r, cy + r], pad=3)
        if box is None:
            continue
        layer, draw = _layer(box)
        lx, ly = cx - box[0], cy - box[1]
        draw.ellipse([lx - r - 1.5, ly - r - 1.5, lx + r + 1.5, ly + r + 1.5], fill=128)
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
        arr = np.asarray(layer)
        behind = c.mount * 0.6  # a hole shows what is behind the object
        c.paint(cls, box, arr == 255, lambda x: behind + 0.1 * x, alpha=0.95)
        c.paint(cls, box, arr == 128, lambda x: x + (255 - x) * 0.3, alpha=0.8)


def _burn(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = c.inside()
        r = rng.uniform(2.0, 7.0)
        box = c.box([cx - 1.6 * r, cx + 1.6 * r], [cy - 1.6 * r, cy + 1.6 * r], pad=1)
        if box is None:
            continue
        X = np.arange(box[0], box[2], dtype=np.float32)[None, :] - cx
        Y = np.arange(box[1], box[3], dtype=np.float32)[:, None] - cy
        ang = np.arctan2(Y, X)
        wob = 1 + 0.3 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.15 * np.sin(5 * ang + rng.uniform(0, 6.3))
        d = np.sqrt(X * X + Y * Y) / (r * wob)
        a = np.clip(1.25 - d, 0, 1) ** 0.7
        char = np.array([40, 24, 12], np.float32) + rng.normal(0, 6, 3).astype(np.float32)
        c.paint(cls, box, a >= 0.35, lambda x: 0.25 * x + 0.75 * char, alpha=a)


def _scratch(c: _Ctx, cls: int) -> None:
    rng = c.rng
    vertical = c.material == "Film emulsion" and rng.random() < 0.7
    for _ in range(int(rng.integers(2, 10))):
        cx, cy = c.inside()
        length = c.S * rng.uniform(0.15, 0.7)
        ang = (np.pi / 2 + rng.normal(0, 0.03)) if vertical else rng.uniform(0, np.pi)
        n = 5
        angs = ang + np.cumsum(rng.normal(0, 0.04, n))
        seg = length / n
        xs = cx + np.concatenate([[0], np.cumsum(np.cos(angs) * seg)]) - length / 2 * math.cos(ang)
        ys = cy + np.concatenate([[0], np.cumsum(np.sin(angs) * seg)]) - length / 2 * math.sin(ang)
        box = c.box(xs, ys, pad=2)
        if box is None:
            continue
        layer, draw = _layer(box)
        draw.line(_shift(zip(xs.tolist(), ys.tolist()), box), fill=255, width=1 if rng.random() < 0.8 else 2)
        k = rng.uniform(0.35, 0.8)
        c.paint(cls, box, np.asarray(layer) > 0, lambda x: x + (255 - x) * k, alpha=0.9)


def _dust(c: _Ctx, cls: int) -> None:
    rng = c.rng
    n = int(rng.integers(15, 160))
    x0, y0, x1, y1 = c.bbox
    xs, ys = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    rs = rng.uniform(0.3, 1.6, n)
    light = rng.random(n) < 0.5
    box = (x0, y0, x1, y1)
    for sel, fn in ((light, lambda x: x + (255 - x) * 0.6), (~light, lambda x: x * 0.4)):
        layer, draw = _layer(box)
        for x, y, r in zip(xs[sel] - x0, ys[sel] - y0, rs[sel]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        c.paint(cls, box, np.asarray(layer) > 0, fn, alpha=0.85)


def _hair(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.inside()
        n = int(c.S * rng.uniform(0.2, 0.6) / 1.5) + 5
        kappa = np.interp(np.arange(n), np.linspace(0, n, 6), rng.uniform(-0.18, 0.18, 6))
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(kappa)
        xs = cx + np.cumsum(np.cos(ang) * 1.5)
        ys = cy + np.cumsum(np.sin(ang) * 1.5)
        box = c.box(xs, ys, pad=2)
        if box is None:
            continue
        layer, draw = _layer(box)
        draw.line(_shift(zip(xs.tolist(), ys.tolist()), box), fill=255, width=1)
        fn = (lambda x: x * 0.25) if rng.random() < 0.7 else (lambda x: x + (255 - x) * 0.5)
        c.paint(cls, box, np.asarray(layer) > 0, fn, alpha=0.85)


def _dirt(c: _Ctx, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = c.inside()
        r = c.S * rng.uniform(0.05, 0.16)
        box = c.box([cx - 1.3 * r, cx + 1.3 * r], [cy - 1.3 * r, cy + 1.3 * r], pad=1)
        if box is None:
            continue
        bw, bh = box[2] - box[0], box[3] - box[1]
        X = np.arange(box[0], box[2], dtype=np.float32)[None, :] - cx
        Y = (np.arange(box[1], box[3], dtype=np.float32)[:, None] - cy) / rng.uniform(0.5, 1.0)
        fall = np.clip(1 - (X * X + Y * Y) / (r * r), 0, 1)
        a = np.clip((_smooth(rng, bh, bw, 5) * fall * 1.8 - 0.3) * 1.6, 0, 1) * rng.uniform(0.4, 0.7)
        grime = np.array([88, 78, 62], np.float32) + rng.normal(0, 12, 3).astype(np.float32)
        c.paint(cls, box, a >= 0.15, lambda x: x * 0.55 + grime * 0.45, alpha=a)


# Drawing order is bottom to top (later damage overwrites earlier, in the image and the mask),
# with the base probability that an image carries the type.
_DAMAGE: tuple[tuple[str, float, Callable[[_Ctx, int], None]], ...] = (
    ("Lightleak", 0.08, _lightleak),
    ("Staining", 0.55, _staining),
    ("Peel", 0.55, _peel),
    ("Material loss", 0.6, _material_loss),
    ("Cracks", 0.4, _cracks),
    ("Fold", 0.3, _fold),
    ("Dirt", 0.35, _dirt),
    ("Writing", 0.25, _writing),
    ("Stamp", 0.2, _stamp),
    ("Sticker", 0.2, _sticker),
    ("Burn marks", 0.15, _burn),
    ("Puncture", 0.2, _puncture),
    ("Scratch", 0.35, _scratch),
    ("Dust", 0.4, _dust),
    ("Hair", 0.15, _hair),
)
_DRAWERS: dict[str, Callable[[_Ctx, int], None]] = {name: draw for name, _, draw in _DAMAGE}
if sorted(_DRAWERS) != sorted(ARTEFACT.names[1:]):
    raise AssertionError("one drawer per ARTeFACT damage type, named as in the class table")
# Material makes some types likelier (light leaks on film, cracks on brittle surfaces, ...).
_AFFINITY: dict[tuple[str, str], float] = {
    ("Film emulsion", "Lightleak"): 3.0,
    ("Glass", "Lightleak"): 2.0,
    ("Film emulsion", "Scratch"): 1.6,
    ("Glass", "Cracks"): 1.6,
    ("Ceramic", "Cracks"): 1.6,
    ("Lacquer", "Cracks"): 1.5,
    ("Canvas", "Cracks"): 1.4,
    ("Paper", "Writing"): 2.0,
    ("Parchment", "Writing"): 2.5,
    ("Paper", "Stamp"): 1.8,
    ("Paper", "Fold"): 1.8,
    ("Textile", "Fold"): 1.6,
    ("Tesserae", "Material loss"): 1.3,
}


# -- the artworks ------------------------------------------------------------------------------


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """(h, w): long side 420-800, aspect 1.12-1.8, short side >= 300; portrait or landscape."""
    long = int(rng.integers(420, 801))
    short = max(300, int(round(long / rng.uniform(1.12, 1.8))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _object_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Where the artwork is: the full frame, or an inset, slightly rotated, maybe ragged shape."""
    if rng.random() < 0.12:
        return np.ones((h, w), bool)
    mx0, mx1 = rng.uniform(0.0, 0.045, 2) * w
    my0, my1 = rng.uniform(0.0, 0.045, 2) * h
    corners = np.array([[mx0, my0], [w - mx1, my0], [w - mx1, h - my1], [mx0, h - my1]])
    centre = corners.mean(0)
    ang = math.radians(rng.uniform(-3.5, 3.5))
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    corners = (corners - centre) @ rot.T + centre + rng.normal(0, 2, (4, 2))
    if rng.random() < 0.35:  # ragged edge: many jittered points along each side
        pts = []
        for i in range(4):
            a, b = corners[i], corners[(i + 1) % 4]
            m = int(np.linalg.norm(b - a) / 12) + 2
            t = np.linspace(0, 1, m, endpoint=False)[:, None]
            side = a + t * (b - a)
            normal = np.array([-(b - a)[1], (b - a)[0]]) / (np.linalg.norm(b - a) + 1e-6)
            side = side + normal * np.cumsum(rng.normal(0, 1.6, (m, 1)), 0).clip(-12, 12)
            pts.extend(map(tuple, side.tolist()))
    else:
        pts = list(map(tuple, corners.tolist()))
    layer = Image.new("L", (w, h), 0)
    ImageDraw.Draw(layer).polygon(pts, fill=255)
    return np.asarray(layer) > 0


def _gradient(t: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] through a palette gradient to float32 RGB."""
    knots = np.linspace(0, 1, len(pal))
    return np.stack([np.interp(t, knots, pal[:, ch]) for ch in range(3)], -1).astype(np.float32)


def _artistic(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    t = np.clip(0.7 * _smooth(rng, h, w, rng.uniform(2, 5)) + 0.3 * _smooth(rng, h, w, rng.uniform(6, 14)), 0, 1)
    im = Image.fromarray(np.clip(_gradient(t, pal), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    s = math.sqrt(h * w)
    for _ in range(int(rng.integers(3, 12))):  # figures and patches of colour
        col = tuple(int(v) for v in np.clip(pal[rng.integers(len(pal))] + rng.normal(0, 15, 3), 0, 255))
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.04, 0.2)
        if rng.random() < 0.5:
            d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5)], fill=col)
        else:
            d.polygon(_blob(rng, cx, cy, r, irr=0.5, nv=12), fill=col)
    for _ in range(int(rng.integers(10, 60))):  # brush strokes
        col = tuple(int(v) for v in np.clip(pal[rng.integers(len(pal))] + rng.normal(0, 20, 3), 0, 255))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang, ln = rng.uniform(0, 2 * np.pi), s * rng.uniform(0.03, 0.15)
        angs = ang + np.cumsum(rng.normal(0, 0.2, 4))
        xs = x + np.concatenate([[0], np.cumsum(np.cos(angs) * ln / 4)])
        ys = y + np.concatenate([[0], np.cumsum(np.sin(angs) * ln / 4)])
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=col, width=int(rng.integers(2, 12)), joint="curve")
    img = np.asarray(im, np.float32)
    return img + _local_noise(rng, (h, w), rng.uniform(1.5, 5))


def _photographic(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    g = 0.6 * _smooth(rng, h, w, rng.uniform(2, 4)) + 0.4 * _smooth(rng, h, w, rng.uniform(5, 10))
    im = Image.fromarray(np.clip(g * 220 + 20, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    s = math.sqrt(h * w)
    for _ in range(int(rng.integers(3, 9))):  # figures, buildings, faces as blurred shapes
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.05, 0.2)
        v = int(rng.integers(10, 245))
        if rng.random() < 0.5:
            d.rectangle([cx - r * 0.5, cy - r, cx + r * 0.5, cy + r], fill=v)
        else:
            d.ellipse([cx - r * 0.6, cy - r, cx + r * 0.6, cy + r], fill=v)
    g = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 5))), np.float32)
    tone = rng.integers(3)
    if tone == 0:  # sepia
        img = g[..., None] * np.array([1.0, 0.86, 0.66], np.float32) + np.array([12, 8, 0], np.float32)
    elif tone == 1:  # black and white
        img = np.repeat(g[..., None], 3, -1)
    else:  # faded colour
        img = 0.55 * g[..., None] + 0.45 * _gradient(g / 255, pal)
    return img + _local_noise(rng, (h, w), rng.uniform(3, 8))  # film grain


def _line_art(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    paper = np.array(_SUBSTRATE["Paper"], np.float32) * rng.uniform(0.85, 1.05) + rng.normal(0, 8, 3)
    ink = pal[int(np.argmin(pal.sum(1)))] * rng.uniform(0.2, 0.6)
    layer = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(layer)
    s = math.sqrt(h * w)
    for _ in range(int(rng.integers(15, 60))):  # contours and curves
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angs = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, 12))
        step = s * rng.uniform(0.005, 0.02)
        xs = x + np.cumsum(np.cos(angs) * step)
        ys = y + np.cumsum(np.sin(angs) * step)
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=int(rng.integers(1, 4)), joint="curve")
    for _ in range(int(rng.integers(1, 5))):  # hatched areas
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.04, 0.12)
        gap = rng.uniform(3, 7)
        for off in np.arange(-r, r, gap):
            d.line([(x + off - r * 0.5, y - r * 0.5), (x + off + r * 0.5, y + r * 0.5)], fill=200, width=1)
    for _ in range(int(rng.integers(0, 6))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.02, 0.1)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=int(rng.integers(1, 3)))
    a = np.asarray(layer, np.float32)[..., None] / 255
    tint = 1 + 0.06 * (_smooth(rng, h, w, 6)[..., None] - 0.5)
    return (paper * tint) * (1 - a) + ink * a + _local_noise(rng, (h, w), 3)


def _geometric(rng: np.random.Generator, h: int, w: int, pal: np.ndarray, tesserae: bool) -> np.ndarray:
    ang = rng.uniform(0, np.pi / 2) if rng.random() < 0.4 else 0.0
    X = np.arange(w, dtype=np.float32)[None, :]
    Y = np.arange(h, dtype=np.float32)[:, None]
    u = X * math.cos(ang) + Y * math.sin(ang)
    v = -X * math.sin(ang) + Y * math.cos(ang)
    cell = rng.uniform(8, 22) if tesserae else rng.uniform(12, 60)
    k = len(pal)
    kind = 0 if tesserae else int(rng.integers(4))
    if kind == 0:  # tiles with random colours
        iu, iv = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
        iu, iv = iu - iu.min(), iv - iv.min()
        lut = rng.integers(0, k, (iv.max() + 1, iu.max() + 1))
        idx = lut[iv, iu]
    elif kind == 1:  # checker
        idx = (np.floor(u / cell).astype(np.int64) + np.floor(v / cell).astype(np.int64)) % 2 * (k - 1)
    elif kind == 2:  # stripes
        idx = np.broadcast_to(np.floor(u / cell).astype(np.int64) % k, (h, w))
    else:  # concentric rings / diamonds
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        dd = np.abs(X - cx) + np.abs(Y - cy) if rng.random() < 0.5 else np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
        idx = np.floor(dd / cell).astype(np.int64) % k
    img = pal[idx] + _local_noise(rng, (h, w), rng.uniform(2, 6))
    if tesserae or rng.random() < 0.3:  # grout / outlines between cells
        grout = ((u / cell) % 1 < 0.12) | ((v / cell) % 1 < 0.12)
        img[grout] = img[grout] * 0.4 + np.array(_SUBSTRATE["Tesserae"], np.float32) * 0.6
    return img


def _material_texture(rng: np.random.Generator, img: np.ndarray, material: str) -> np.ndarray:
    """Surface character of the support (weave, grain, fibres, gloss), added on top of the picture."""
    h, w = img.shape[:2]
    if material in ("Canvas", "Textile"):
        p = rng.uniform(3, 6)
        weave = np.sin(np.arange(w) * 2 * np.pi / p)[None, :] * np.sin(np.arange(h) * 2 * np.pi / p)[:, None]
        img = img + weave.astype(np.float32)[..., None] * rng.uniform(4, 10)
    elif material == "Wood":
        warp = _smooth(rng, h, w, 4) * rng.uniform(20, 60)
        grain = np.sin((np.arange(h, dtype=np.float32)[:, None] + warp) * 2 * np.pi / rng.uniform(5, 14))
        img = img * 0.85 + np.array(_SUBSTRATE["Wood"], np.float32) * 0.15 + grain[..., None] * 7
    elif material in ("Paper", "Parchment"):
        fib = _smooth(rng, h, w, rng.uniform(40, 80)) - 0.5
        img = img * 0.92 + np.array(_SUBSTRATE[material], np.float32) * 0.08 + fib[..., None] * 14
    elif material == "Glass":
        img = img * 0.92 + np.array([180, 215, 210], np.float32) * 0.08
    elif material in ("Ceramic", "Lacquer"):
        gloss = _smooth(rng, h, w, 2) ** 3 * rng.uniform(20, 60)
        img = img * (0.7 if material == "Lacquer" else 1.0) + gloss[..., None]
    elif material == "Film emulsion":
        vig = 1 - 0.25 * ((np.linspace(-1, 1, h)[:, None] ** 2 + np.linspace(-1, 1, w)[None, :] ** 2) / 2)
        img = img * vig.astype(np.float32)[..., None]
    return img


def render(index: int, seed: int) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Image `index` of the set with `seed`: (RGB uint8 (h, w, 3), labels uint8 (h, w), material, content).

    Depends only on (index, seed): its own SeedSequence, never a shared stream.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0)))
    material = MATERIALS[int(rng.integers(len(MATERIALS)))]
    weights = np.array(_CONTENT_WEIGHTS[material])
    content = CONTENTS[int(rng.choice(len(CONTENTS), p=weights / weights.sum()))]
    h, w = _size(rng)
    pal = _palette(rng, int(rng.integers(3, 7)))
    if content == "Artistic depiction":
        img = _artistic(rng, h, w, pal)
    elif content == "Photographic depiction":
        img = _photographic(rng, h, w, pal)
    elif content == "Line art":
        img = _line_art(rng, h, w, pal)
    else:
        img = _geometric(rng, h, w, pal, tesserae=material == "Tesserae")
    img = _material_texture(rng, img.astype(np.float32), material)
    obj = _object_mask(rng, h, w)
    ys, xs = np.nonzero(obj.any(1))[0], np.nonzero(obj.any(0))[0]
    mount = np.array(
        [(22, 22, 22), (60, 60, 62), (128, 128, 128), (236, 234, 228), (88, 98, 114), (200, 190, 168)][
            int(rng.integers(6))
        ],
        np.float32,
    ) + rng.normal(0, 6, 3).astype(np.float32)
    substrate = np.array(_SUBSTRATE[material], np.float32) + rng.normal(0, 10, 3).astype(np.float32)
    ctx = _Ctx(
        img=np.ascontiguousarray(img, np.float32),
        lab=np.full((h, w), _CLEAN, np.uint8),
        obj=obj,
        bbox=(int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1),
        rng=rng,
        substrate=substrate,
        mount=mount,
        material=material,
        content=content,
    )

    forced = _DAMAGE[index % len(_DAMAGE)][0]  # guarantees every type in any 15 consecutive images
    for name, p, draw in _DAMAGE:
        p = min(0.95, p * _AFFINITY.get((material, name), 1.0))
        if rng.random() < p or name == forced:
            draw(ctx, ARTEFACT.names.index(name))
    forced_id = ARTEFACT.names.index(forced)
    for _ in range(5):  # if later damage covered it (or it fell off the object), draw it again on top
        if (ctx.lab[obj] == forced_id).any():
            break
        _DRAWERS[forced](ctx, forced_id)

    outside = ~obj
    ctx.img[outside] = ctx.mount + rng.standard_normal((int(outside.sum()), 1), dtype=np.float32) * 2
    ctx.lab[outside] = IGNORE_INDEX
    return np.clip(ctx.img, 0, 255).astype(np.uint8), ctx.lab, material, content


# -- augmented copies ------------------------------------------------------------------------------


def augment_copy(img: np.ndarray, lab: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copy k (1-based): flip, rot90 or colour change, by AUG_KINDS[(k-1) % 3].

    Geometric copies move image and mask together; a colour copy keeps the mask as is.
    """
    kind = AUG_KINDS[(k - 1) % len(AUG_KINDS)]
    if kind == "flip":
        axis = int(rng.integers(2))
        return np.ascontiguousarray(np.flip(img, axis)), np.ascontiguousarray(np.flip(lab, axis))
    if kind == "rot90":
        turns = int(rng.integers(1, 4))
        return np.ascontiguousarray(np.rot90(img, turns)), np.ascontiguousarray(np.rot90(lab, turns))
    # Hue rotation (about the grey axis, in YIQ) with per-channel gains, then a gamma curve:
    # two C passes in Pillow, no float copy of the image.
    a = math.radians(rng.uniform(12, 60) * (1 if rng.random() < 0.5 else -1))
    co, si = math.cos(a), math.sin(a)
    rot = np.array(
        [
            [0.299 + 0.701 * co + 0.168 * si, 0.587 - 0.587 * co + 0.330 * si, 0.114 - 0.114 * co - 0.497 * si],
            [0.299 - 0.299 * co - 0.328 * si, 0.587 + 0.413 * co + 0.035 * si, 0.114 - 0.114 * co + 0.292 * si],
            [0.299 - 0.300 * co + 1.250 * si, 0.587 - 0.588 * co - 1.050 * si, 0.114 + 0.886 * co - 0.203 * si],
        ]
    ) * rng.uniform(0.85, 1.12, (3, 1))
    matrix = tuple(float(v) for row in rot for v in (*row, 0.0))
    gamma = rng.uniform(0.75, 1.3)
    lut = [min(255, int(round(255 * (i / 255) ** gamma))) for i in range(256)] * 3
    out = np.asarray(Image.fromarray(img).convert("RGB", matrix).point(lut))
    return out, lab.copy()


# -- writing a set ---------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _write_group(root: Path, index: int, seed: int, aug_copies: int) -> list[dict[str, object]]:
    """Render original `index`, write it and its copies, return their metadata rows."""
    img, lab, material, content = render(index, seed)
    aug_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    stem = f"syn{index:05d}"
    rows = []
    pairs = [(stem, img, lab)]
    for k in range(1, aug_copies + 1):
        pairs.append((f"{stem}_aug{k}", *augment_copy(img, lab, k, aug_rng)))
    for name, im, lb in pairs:
        (root / "images" / f"{name}.png").write_bytes(_png(im))
        (root / "annotations" / f"{name}.png").write_bytes(_png(lb))
        rows.append(
            {
                "id": name,
                "material": material,
                "content": content,
                "image_path": f"images/{name}.png",
                "annotation_path": f"annotations/{name}.png",
                "width": im.shape[1],
                "height": im.shape[0],
            }
        )
    return rows


def _marker(n: int, seed: int, aug_copies: int) -> dict[str, object]:
    return {
        "generator": "poc59.data.synthetic",
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "aug_copies": aug_copies,
    }


def _check_args(n: int, seed: int, aug_copies: int) -> tuple[int, int, int]:
    n, seed, aug_copies = int(n), int(seed), int(aug_copies)
    if n < 1:
        raise ValueError(f"n must be >= 1 (originals to generate), got {n}")
    if aug_copies < 0:
        raise ValueError(f"aug_copies must be >= 0, got {aug_copies}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return n, seed, aug_copies


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def generate(out: str | Path, n: int, seed: int = 0, aug_copies: int = 3, *, workers: int | None = None) -> Path:
    """Write n originals (+ aug_copies copies each) to `out` in the ARTeFACT layout; return `out`.

    Atomic: everything goes into a hidden temporary sibling folder, the
    `.complete` marker last, then one rename puts it in place, so `out` is
    either absent or complete. Refuses if `out` exists and is non-empty (it
    never deletes anything). Output is byte-identical for the same (n, seed,
    aug_copies) whatever `workers` is (threads: numpy, zlib and most of Pillow
    release the GIL).
    """
    n, seed, aug_copies = _check_args(n, seed, aug_copies)
    out = Path(out).expanduser()
    if _is_nonempty_dir(out) or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another folder or delete it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    start = time.perf_counter()
    try:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        workers = _default_workers() if workers is None else max(1, int(workers))
        groups = []
        with (
            ThreadPoolExecutor(workers) as pool,
            Steps(log, "synthetic set", n, "originals") as steps,
        ):
            for group in pool.map(lambda i: _write_group(tmp, i, seed, aug_copies), range(n)):
                groups.append(group)
                steps.advance()
        with (tmp / "metadata.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for rows in groups:
                writer.writerows(rows)
        (tmp / MARKER).write_text(json.dumps(_marker(n, seed, aug_copies), sort_keys=True) + "\n")
        try:
            os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"{out} was filled by someone else while generating") from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "synthetic set: %d originals + %d copies in %.1f s -> %s", n, n * aug_copies, time.perf_counter() - start, out
    )
    return out


def _read_marker(out: Path) -> dict | None:
    """The `.complete` marker this module wrote, or None (absent, unreadable, or someone else's file)."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == "poc59.data.synthetic" else None


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Exclusive lock on a sibling `.NAME.lock` file; best effort (no fcntl, or a filesystem without locks)."""
    try:
        import fcntl  # POSIX only (an optional platform module)
    except ImportError:  # Windows: rely on the atomic rename alone
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            log.debug("no file lock on %s; relying on the atomic rename", out.parent)
        try:
            yield
        finally:
            try:
                fcntl.flock(f, fcntl.LOCK_UN)
            except OSError:
                pass


def ensure_synthetic(out: str | Path, n: int, seed: int = 0, aug_copies: int = 3) -> Path:
    """Return `out` holding the synthetic set (n, seed, aug_copies), generating it only if needed.

    - a complete set with the same parameters and GENERATOR_VERSION (its
      `.complete` marker) is used as is: nothing is rewritten;
    - a set this module made with other parameters or an older version
      (a marker that differs) is replaced atomically;
    - a missing or empty folder is generated;
    - a non-empty folder WITHOUT a marker is an error: it is not ours (our
      writes are atomic, so a half-written set never sits at `out`), and we
      never delete data we did not write.
    Safe for concurrent callers: a file lock serialises them, and if locks do
    not work (some network filesystems) the loser of the rename race uses the
    winner's identical folder.
    """
    n, seed, aug_copies = _check_args(n, seed, aug_copies)
    out = Path(out).expanduser()
    want = _marker(n, seed, aug_copies)
    with _lock(out):
        have = _read_marker(out)
        if have is None and _is_nonempty_dir(out):
            have = _read_marker(out)  # re-read: a racer without the lock may have just renamed its set in
            if have is None:
                raise FileExistsError(
                    f"{out} is not empty and holds no synthetic set (no {MARKER} marker); "
                    "point the synthetic data root at an empty or new folder, or delete this one"
                )
        if have == want:
            log.debug("synthetic set already complete at %s", out)
            return out
        if have is not None:
            log.warning("%s holds a synthetic set made with %s; regenerating for %s", out, have, want)
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "set")
            shutil.rmtree(trash, ignore_errors=True)
        log.info("generating the synthetic set (n=%d, seed=%d, %d copies each) into %s", n, seed, aug_copies, out)
        try:
            return generate(out, n, seed, aug_copies)
        except FileExistsError:
            if _read_marker(out) == want:  # another process won the race with the same set
                return out
            raise


# -- command line ----------------------------------------------------------------------------------

CLI = Command(
    prog="python -m poc59.data.synthetic",
    summary="Write a new built-in synthetic damage set (ARTeFACT layout, 16 classes) into an empty folder.",
    examples=("python -m poc59.data.synthetic out=/tmp/synthetic n=100 seed=0",),
    keys=(
        Key("out", str, "the folder to write (must be empty or absent)", required=True),
        Key("n", int, "originals", default=100),
        Key("seed", int, "seed of the whole set", default=0),
        Key("aug", int, "stored _augK copies of each original", default=3, dest="aug_copies"),
        Key("workers", int, "processes drawing the images (default: the CPUs this process may use)", default=None),
    ),
    notes="Exit 0 done, 2 a bad setting or a folder that is not empty.",
)


def _generate(options: dict[str, Any]) -> int:
    generate(options.pop("out"), options.pop("n", 100), options.pop("seed", 0), options.pop("aug_copies", 3), **options)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m poc59.data.synthetic out=DIR [n=100] [seed=0] [aug=3]`: write a new set (refuses a non-empty DIR)."""
    return run_command(CLI, argv, _generate, (FileExistsError,), log)


if __name__ == "__main__":
    sys.exit(main())

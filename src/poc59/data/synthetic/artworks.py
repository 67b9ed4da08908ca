"""The procedural artworks (gradients, noise, strokes, figures, tiles, line drawings on ten ARTeFACT-like
materials) with their damage painted on (`render`), and the stored `_augK` copies (`augment_copy`)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.data.synthetic.damage import AFFINITY, DAMAGE, DRAWERS
from poc59.data.synthetic.drawing import Picture, blob_outline, local_noise, palette, smooth_noise

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
AUG_KINDS: tuple[str, ...] = ("flip", "rot90", "colour")
"""Copy k (1-based) is of kind AUG_KINDS[(k - 1) % 3]: geometric copies move the mask, colour copies keep it."""
CLEAN = ARTEFACT.names.index("Clean")

# Substrate colour under the paint/emulsion: what Material loss, Peel and Puncture rims reveal.
SUBSTRATE: dict[str, tuple[int, int, int]] = {
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
    t = np.clip(
        0.7 * smooth_noise(rng, h, w, rng.uniform(2, 5)) + 0.3 * smooth_noise(rng, h, w, rng.uniform(6, 14)), 0, 1
    )
    im = Image.fromarray(np.clip(_gradient(t, pal), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    s = math.sqrt(h * w)
    for _ in range(int(rng.integers(3, 12))):  # figures and patches of colour
        col = tuple(int(v) for v in np.clip(pal[rng.integers(len(pal))] + rng.normal(0, 15, 3), 0, 255))
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.04, 0.2)
        if rng.random() < 0.5:
            d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5)], fill=col)
        else:
            d.polygon(blob_outline(rng, cx, cy, r, irr=0.5, nv=12), fill=col)
    for _ in range(int(rng.integers(10, 60))):  # brush strokes
        col = tuple(int(v) for v in np.clip(pal[rng.integers(len(pal))] + rng.normal(0, 20, 3), 0, 255))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang, ln = rng.uniform(0, 2 * np.pi), s * rng.uniform(0.03, 0.15)
        angs = ang + np.cumsum(rng.normal(0, 0.2, 4))
        xs = x + np.concatenate([[0], np.cumsum(np.cos(angs) * ln / 4)])
        ys = y + np.concatenate([[0], np.cumsum(np.sin(angs) * ln / 4)])
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=col, width=int(rng.integers(2, 12)), joint="curve")
    img = np.asarray(im, np.float32)
    return img + local_noise(rng, (h, w), rng.uniform(1.5, 5))


def _photographic(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    g = 0.6 * smooth_noise(rng, h, w, rng.uniform(2, 4)) + 0.4 * smooth_noise(rng, h, w, rng.uniform(5, 10))
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
    return img + local_noise(rng, (h, w), rng.uniform(3, 8))  # film grain


def _line_art(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    paper = np.array(SUBSTRATE["Paper"], np.float32) * rng.uniform(0.85, 1.05) + rng.normal(0, 8, 3)
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
    tint = 1 + 0.06 * (smooth_noise(rng, h, w, 6)[..., None] - 0.5)
    return (paper * tint) * (1 - a) + ink * a + local_noise(rng, (h, w), 3)


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
    img = pal[idx] + local_noise(rng, (h, w), rng.uniform(2, 6))
    if tesserae or rng.random() < 0.3:  # grout / outlines between cells
        grout = ((u / cell) % 1 < 0.12) | ((v / cell) % 1 < 0.12)
        img[grout] = img[grout] * 0.4 + np.array(SUBSTRATE["Tesserae"], np.float32) * 0.6
    return img


def _material_texture(rng: np.random.Generator, img: np.ndarray, material: str) -> np.ndarray:
    """Surface character of the support (weave, grain, fibres, gloss), added on top of the picture."""
    h, w = img.shape[:2]
    if material in ("Canvas", "Textile"):
        p = rng.uniform(3, 6)
        weave = np.sin(np.arange(w) * 2 * np.pi / p)[None, :] * np.sin(np.arange(h) * 2 * np.pi / p)[:, None]
        img = img + weave.astype(np.float32)[..., None] * rng.uniform(4, 10)
    elif material == "Wood":
        warp = smooth_noise(rng, h, w, 4) * rng.uniform(20, 60)
        grain = np.sin((np.arange(h, dtype=np.float32)[:, None] + warp) * 2 * np.pi / rng.uniform(5, 14))
        img = img * 0.85 + np.array(SUBSTRATE["Wood"], np.float32) * 0.15 + grain[..., None] * 7
    elif material in ("Paper", "Parchment"):
        fib = smooth_noise(rng, h, w, rng.uniform(40, 80)) - 0.5
        img = img * 0.92 + np.array(SUBSTRATE[material], np.float32) * 0.08 + fib[..., None] * 14
    elif material == "Glass":
        img = img * 0.92 + np.array([180, 215, 210], np.float32) * 0.08
    elif material in ("Ceramic", "Lacquer"):
        gloss = smooth_noise(rng, h, w, 2) ** 3 * rng.uniform(20, 60)
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
    pal = palette(rng, int(rng.integers(3, 7)))
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
    substrate = np.array(SUBSTRATE[material], np.float32) + rng.normal(0, 10, 3).astype(np.float32)
    ctx = Picture(
        img=np.ascontiguousarray(img, np.float32),
        lab=np.full((h, w), CLEAN, np.uint8),
        obj=obj,
        bbox=(int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1),
        rng=rng,
        substrate=substrate,
        mount=mount,
        material=material,
        content=content,
    )

    forced = DAMAGE[index % len(DAMAGE)][0]  # guarantees every type in any 15 consecutive images
    for name, p, draw in DAMAGE:
        p = min(0.95, p * AFFINITY.get((material, name), 1.0))
        if rng.random() < p or name == forced:
            draw(ctx, ARTEFACT.names.index(name))
    forced_id = ARTEFACT.names.index(forced)
    for _ in range(5):  # if later damage covered it (or it fell off the object), draw it again on top
        if (ctx.lab[obj] == forced_id).any():
            break
        DRAWERS[forced](ctx, forced_id)

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

"""The 15 ARTeFACT damage types, each drawn with its own signature on a `Picture` (`DAMAGE`: name, how often,
drawer); colours always come from the pixels underneath or the picture's own substrate / mount, never fixed."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from poc59.core.classes import ARTEFACT
from poc59.data.synthetic.drawing import (
    Picture,
    blank_layer,
    blob_outline,
    hsv_colour,
    local_noise,
    shifted,
    smooth_noise,
)

# -- the 15 damage types -----------------------------------------------------------------------
# Each takes the context and draws one or more instances of its type. Colours are always
# derived from the pixels underneath (or the image's own substrate / mount), never fixed.


def _lightleak(c: Picture, cls: int) -> None:
    rng = c.rng
    hue = rng.uniform(0.0, 0.13) if rng.random() < 0.7 else rng.uniform(0.85, 1.0)
    colour = hsv_colour(hue, rng.uniform(0.55, 0.95), 1.0)
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


def _staining(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = c.inside()
        r = c.S * rng.uniform(0.05, 0.19)
        pts = blob_outline(rng, cx, cy, r, irr=0.35, aspect=rng.uniform(0.6, 1.0))
        box = c.box([p[0] for p in pts], [p[1] for p in pts], pad=r * 0.3)
        if box is None:
            continue
        layer, draw = blank_layer(box)
        draw.polygon(shifted(pts, box), fill=255)
        a = np.asarray(layer.filter(ImageFilter.GaussianBlur(max(1.0, r * 0.12))), np.float32) / 255
        tide = np.exp(-(((a - 0.45) / 0.08) ** 2))
        tint = np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.42, 0.7)], np.float32) * rng.uniform(0.7, 0.92)
        strength = rng.uniform(0.4, 0.8)
        c.paint(cls, box, a >= 0.4, lambda x: x * tint * (1 - 0.25 * tide[..., None]), alpha=a * strength)


def _peel(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.inside()
        big = c.S * rng.uniform(0.08, 0.24)
        box = c.box([cx - 1.7 * big, cx + 1.7 * big], [cy - 1.7 * big, cy + 1.7 * big], pad=1)
        if box is None:
            continue
        fill, dfill = blank_layer(box)
        for _ in range(int(rng.integers(10, 30))):  # flakes, each lifted by its own amount
            fx, fy = cx + rng.normal(0, 0.55 * big), cy + rng.normal(0, 0.55 * big)
            pts = shifted(blob_outline(rng, fx, fy, big * rng.uniform(0.15, 0.5), irr=0.7, nv=9), box)
            dfill.polygon(pts, fill=int(rng.integers(90, 256)))
        lift_map = np.asarray(fill, np.float32) / 255
        inside = lift_map > 0
        edge = (np.asarray(fill.filter(ImageFilter.MaxFilter(3))) > 0) & ~inside  # curled rim's shadow
        lift = rng.uniform(0.3, 0.6) * lift_map[inside][:, None]
        sub = c.substrate * 0.5 + 128 * 0.5
        c.paint(cls, box, inside, lambda x: x * (1 - lift) + sub * lift + 12, alpha=0.9)
        c.paint(cls, box, edge, lambda x: x * 0.5, alpha=0.8)


def _material_loss(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = c.near_edge() if rng.random() < 0.5 else c.inside()
        r = c.S * rng.uniform(0.06, 0.26)
        pts = blob_outline(rng, cx, cy, r, irr=0.55, nv=40, aspect=rng.uniform(0.5, 1.0))
        box = c.box([p[0] for p in pts], [p[1] for p in pts], pad=3)
        if box is None:
            continue
        layer, draw = blank_layer(box)
        draw.polygon(shifted(pts, box), fill=255)
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


def _cracks(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = c.inside()
        paths: list[np.ndarray] = []
        _crack_paths(rng, cx, cy, rng.uniform(0, 2 * np.pi), c.S * rng.uniform(0.25, 0.7), 3, paths)
        allp = np.concatenate(paths)
        box = c.box(allp[:, 0], allp[:, 1], pad=2)
        if box is None:
            continue
        layer, draw = blank_layer(box)
        for i, p in enumerate(paths):
            draw.line(
                shifted(p.tolist(), box), fill=255, width=int(rng.integers(2, 4)) if i < 3 else int(rng.integers(1, 3))
            )
        dark = rng.uniform(0.25, 0.5)
        c.paint(cls, box, np.asarray(layer) > 0, lambda x: x * dark, alpha=0.9)


def _fold(c: Picture, cls: int) -> None:
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


def _writing(c: Picture, cls: int) -> None:
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
    layer, draw = blank_layer(box)
    width = 2 if hx > 6 else 1
    for s in strokes:
        draw.line(shifted(s.tolist(), box), fill=255, width=width, joint="curve")
    ink = np.array([(55, 38, 20), (28, 30, 72), (22, 22, 22), (105, 78, 48)][int(rng.integers(4))], np.float32)
    ink = ink + rng.normal(0, 10, 3).astype(np.float32)
    c.paint(cls, box, np.asarray(layer) > 0, lambda x: 0.7 * ink + 0.3 * x * 0.5, alpha=rng.uniform(0.7, 0.95))


def _stamp(c: Picture, cls: int) -> None:
    rng = c.rng
    cx, cy = c.inside()
    r = rng.uniform(18, 60)
    box = c.box([cx - r, cx + r], [cy - r, cy + r], pad=3)
    if box is None:
        return
    layer, draw = blank_layer(box)
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
    gaps = smooth_noise(rng, bh, bw, max(3.0, max(bw, bh) / 6)) > rng.uniform(0.2, 0.4)  # worn ink
    a = inked * gaps * rng.uniform(0.55, 0.9)
    ink = np.array([(175, 40, 45), (40, 62, 150), (110, 52, 128), (35, 35, 40)][int(rng.integers(4))], np.float32)
    c.paint(cls, box, a >= 0.25, lambda x: x * (ink / 255) * 0.85, alpha=a)


def _sticker(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 3))):
        sw = int(c.S * rng.uniform(0.05, 0.15)) + 8
        sh = int(sw * rng.uniform(0.35, 0.9)) + 4
        paper = hsv_colour(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.75, 1.0))
        arr = np.empty((sh, sw, 3), np.float32)
        arr[:] = paper
        arr += local_noise(rng, (sh, sw), 4)
        sticker = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(sticker)
        printed = tuple(int(v) for v in hsv_colour(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.1, 0.5)))
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


def _puncture(c: Picture, cls: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(1, 6))):
        cx, cy = c.inside()
        r = rng.uniform(1.5, 5.0)
        box = c.box([cx - r, cx + r], [cy - r, cy + r], pad=3)
        if box is None:
            continue
        layer, draw = blank_layer(box)
        lx, ly = cx - box[0], cy - box[1]
        draw.ellipse([lx - r - 1.5, ly - r - 1.5, lx + r + 1.5, ly + r + 1.5], fill=128)
        draw.ellipse([lx - r, ly - r, lx + r, ly + r], fill=255)
        arr = np.asarray(layer)
        behind = c.mount * 0.6  # a hole shows what is behind the object
        c.paint(cls, box, arr == 255, lambda x: behind + 0.1 * x, alpha=0.95)
        c.paint(cls, box, arr == 128, lambda x: x + (255 - x) * 0.3, alpha=0.8)


def _burn(c: Picture, cls: int) -> None:
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


def _scratch(c: Picture, cls: int) -> None:
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
        layer, draw = blank_layer(box)
        draw.line(shifted(zip(xs.tolist(), ys.tolist()), box), fill=255, width=1 if rng.random() < 0.8 else 2)
        k = rng.uniform(0.35, 0.8)
        c.paint(cls, box, np.asarray(layer) > 0, lambda x: x + (255 - x) * k, alpha=0.9)


def _dust(c: Picture, cls: int) -> None:
    rng = c.rng
    n = int(rng.integers(15, 160))
    x0, y0, x1, y1 = c.bbox
    xs, ys = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    rs = rng.uniform(0.3, 1.6, n)
    light = rng.random(n) < 0.5
    box = (x0, y0, x1, y1)
    for sel, fn in ((light, lambda x: x + (255 - x) * 0.6), (~light, lambda x: x * 0.4)):
        layer, draw = blank_layer(box)
        for x, y, r in zip(xs[sel] - x0, ys[sel] - y0, rs[sel]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        c.paint(cls, box, np.asarray(layer) > 0, fn, alpha=0.85)


def _hair(c: Picture, cls: int) -> None:
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
        layer, draw = blank_layer(box)
        draw.line(shifted(zip(xs.tolist(), ys.tolist()), box), fill=255, width=1)
        fn = (lambda x: x * 0.25) if rng.random() < 0.7 else (lambda x: x + (255 - x) * 0.5)
        c.paint(cls, box, np.asarray(layer) > 0, fn, alpha=0.85)


def _dirt(c: Picture, cls: int) -> None:
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
        a = np.clip((smooth_noise(rng, bh, bw, 5) * fall * 1.8 - 0.3) * 1.6, 0, 1) * rng.uniform(0.4, 0.7)
        grime = np.array([88, 78, 62], np.float32) + rng.normal(0, 12, 3).astype(np.float32)
        c.paint(cls, box, a >= 0.15, lambda x: x * 0.55 + grime * 0.45, alpha=a)


# Drawing order is bottom to top (later damage overwrites earlier, in the image and the mask),
# with the base probability that an image carries the type.
DAMAGE: tuple[tuple[str, float, Callable[[Picture, int], None]], ...] = (
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
DRAWERS: dict[str, Callable[[Picture, int], None]] = {name: draw for name, _, draw in DAMAGE}
if sorted(DRAWERS) != sorted(ARTEFACT.names[1:]):
    raise AssertionError("one drawer per ARTeFACT damage type, named as in the class table")
# Material makes some types likelier (light leaks on film, cracks on brittle surfaces, ...).
AFFINITY: dict[tuple[str, str], float] = {
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

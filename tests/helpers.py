"""Small test helpers: ARTeFACT-layout folders written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
CRACKFOREST = SHARED / "data" / "crackforest"


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, image_ext: str = ".png") -> None:
    """Write one image/mask pair in the ARTeFACT layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask.astype(np.uint8), "L").save(root / "annotations" / f"{stem}.png")


def make_folder(root: Path, n: int = 6, copies: int = 2, size: tuple[int, int] = (40, 32), classes: int = 4, seed: int = 0) -> Path:
    """n originals (+ copies named <id>_augK) with random images and blocky masks, some 255."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.kron(rng.integers(0, classes, (h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
        mask[:2] = 255
        write_pair(root, f"img{i:03d}", image, mask)
        for k in range(1, copies + 1):  # distinct copies: horizontal, vertical, both flips
            flip = {1: (slice(None), slice(None, None, -1)), 2: (slice(None, None, -1),), 0: (slice(None, None, -1), slice(None, None, -1))}[k % 3]
            write_pair(root, f"img{i:03d}_aug{k}", np.ascontiguousarray(image[flip]), np.ascontiguousarray(mask[flip]))
    return root

"""Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 MP), kept or lifted on request.

The limit guards against a tiny file that decodes to gigabytes. Real scans of paintings exceed it, so
training (`data.allow_large_images`) and predict (`allow_large_images`) lift it when the user says so,
for the duration of the work only; otherwise an image over it is refused with that setting named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PIL import Image


@contextlib.contextmanager
def pixel_limit(allow_large: bool) -> Iterator[None]:
    """Pillow's limit as is, or lifted (None) while the block runs, for every thread."""
    saved = Image.MAX_IMAGE_PIXELS
    if allow_large:
        Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def over_limit(width: int, height: int) -> int | None:
    """The limit a `width` x `height` image exceeds, or None (no limit, or within it)."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit is not None and width * height > limit else None

"""Label Studio's brush RLE: a binary mask <-> the `rle` list of a BrushLabels region.

Label Studio stores a brush region as the RGBA pixels of its canvas (row-major, 4 bytes a pixel) packed by
thi.ng's rle-pack: a bit stream of a 32-bit value count, a 5-bit word size - 1, four 4-bit run-length field
sizes - 1, then chunks. A chunk starts with one bit: 1 = a run (2 bits pick the length field, the length - 1,
one word repeated), 0 = literals (2 bits pick the length field, the count - 1, that many words). The stream is
padded with zero bits to whole bytes and given as a list of byte values.

A region's mask is its alpha channel: `mask_to_rle` paints every channel 255 where the mask is set (what
label-studio-sdk's `mask2rle` writes, byte for byte); `rle_to_mask` reads any word size and field sizes (the
editor's own encoder picks its own) and keeps pixels whose alpha is at least half (128).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RleError", "mask_to_rle", "rle_to_mask", "decode_rle"]

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # run-length field widths in bits, as label-studio-sdk's encoder writes them
ALPHA_SET = 128  # an alpha of at least this paints the pixel (the editor's brush strokes are 255)


class RleError(ValueError):
    """An `rle` list that is not Label Studio's brush RLE, or does not fit the image it claims."""


def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """The `rle` list of a BrushLabels region painting the pixels where `mask` [H, W] is non-zero."""
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is 2-D [H, W], got shape {mask.shape}")
    flat = np.repeat(np.where(mask.ravel() != 0, 255, 0).astype(np.uint8), 4)  # RGBA, every channel alike
    parts = [_bits(flat.size, 32), _bits(WORD_SIZE - 1, 5), "".join(_bits(s - 1, 4) for s in RLE_SIZES)]
    if flat.size:
        edges = np.flatnonzero(np.diff(flat)) + 1
        starts = np.concatenate([[0], edges])
        lengths = np.diff(np.concatenate([starts, [flat.size]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = _bits(int(flat[start]), WORD_SIZE)
            if length == 1:
                parts.append("000000" + word)  # literals, field 0, count 1
                continue
            while length > 2**16:  # the widest field holds 2**16; longer runs are split
                parts.append("111" + _bits(2**16 - 1, 16) + word)
                length -= 2**16
            field = next(i for i, s in enumerate(RLE_SIZES) if length <= 2 ** RLE_SIZES[i])
            parts.append("1" + _bits(field, 2) + _bits(length - 1, RLE_SIZES[field]) + word)
    stream = "".join(parts)
    stream += "0" * (8 - len(stream) % 8)  # always pads, even a whole byte (as the reference encoder does)
    packed = np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord("0"))
    return packed.tolist()


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """The flat uint8 values an `rle` list holds (RGBA pixels for a brush region)."""
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise RleError(f"rle must be a list of byte values: {err}") from None
    if data.ndim != 1 or data.size < 6 or data.min() < 0 or data.max() > 255:
        raise RleError("rle must be a list of at least 6 byte values (0..255)")
    bits = (np.unpackbits(data.astype(np.uint8)) + ord("0")).tobytes().decode()
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise RleError("rle ends before its values do")
        value = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        run = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise RleError(f"rle runs past its {num} values")
        if run:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def rle_to_mask(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """A bool [height, width] mask from a BrushLabels region's `rle` (its alpha channel, at least half set)."""
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise RleError(f"rle holds {flat.size} values, not the {height}x{width}x4 of a {width}x{height} image")
    return flat.reshape(height, width, 4)[:, :, 3] >= ALPHA_SET

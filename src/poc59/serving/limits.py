"""What one request may cost the server, and the checks that answer a hostile upload before it costs it.

The server keeps one model in memory and answers requests from a queue: at most `concurrency` at a time
(Gradio's `concurrency_limit`), at most `queue_size` waiting (Gradio's `max_size`; a request beyond it is
told the server is busy). Each request is bounded before its pixels are decoded:

- `max_upload_mb`: the largest file accepted (Gradio refuses a larger upload in the page);
- `max_pixels`: the largest scan, width x height, read from the file's header (also below Pillow's
  decompression-bomb limit, which a bomb trips first);
- `max_memory_mb`: the working memory one scan may need (`working_bytes`: the decoded scan, its maps and
  overlay, and the model's logits) -- a scan over it is refused, not half-predicted;
- `timeout_s`: the time one prediction may take once it runs; it is checked between bands of rows, so a
  scan over it stops within one band and is answered "took too long".
"""

from __future__ import annotations

from dataclasses import dataclass

from poc59.core.config import SettingError

# Per pixel of the scan, what a request holds at once: the RGB scan (3), the class map (1), the confidence
# map (1), the overlay shown (3) and its copy in the page's PNG (3, encoded; bounded by the raw size).
BYTES_PER_PIXEL = 11
BAND_ROWS = 256  # poc59.inference.image's bands: the logits of this many rows, and their softmax, at once


@dataclass(frozen=True)
class Limits:
    """The bounds of one request and of the queue (module docstring); `check` refuses impossible values."""

    max_upload_mb: float = 200.0
    max_pixels: int = 60_000_000
    max_memory_mb: float = 2048.0
    timeout_s: float = 300.0
    concurrency: int = 1
    queue_size: int = 16

    def check(self) -> Limits:
        """The limits themselves, or SettingError naming the key and what it takes."""
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_pixels": self.max_pixels,
            "max_memory_mb": self.max_memory_mb,
            "timeout_s": self.timeout_s,
            "concurrency": self.concurrency,
            "queue_size": self.queue_size,
        }
        for key, value in positive.items():
            if not value > 0:
                raise SettingError(f"{key}={value}: must be positive, e.g. {key}={getattr(Limits, key)}")
        return self

    @property
    def upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def working_bytes(width: int, height: int, num_classes: int, streaming: int | None) -> int:
    """The memory one request holds for a `width` x `height` scan: `BYTES_PER_PIXEL` a pixel, a band of
    float32 logits (twice: the band and its softmax), and `streaming` (the sliding window's working memory,
    `poc59.inference.image.streaming_bytes`; None for a model that sees the whole scan at once)."""
    return width * height * BYTES_PER_PIXEL + 2 * BAND_ROWS * width * num_classes * 4 + (streaming or 0)


class RequestRefused(ValueError):
    """An upload or a setting of one request that the server does not predict: the message, shown in the
    page, names what was wrong and what to do. The server goes on serving."""


def check_scan_size(width: int, height: int, working: int, limits: Limits, name: str) -> None:
    """RequestRefused when a `width` x `height` scan needing `working` bytes exceeds `limits`."""
    if width * height > limits.max_pixels:
        raise RequestRefused(
            f"{name}: {width} x {height} = {width * height:,} pixels, more than this server takes "
            f"({limits.max_pixels:,}, its max_pixels). Send a smaller scan, or ask whoever runs the server to "
            "raise max_pixels"
        )
    if working > limits.max_memory_mb * 2**20:
        raise RequestRefused(
            f"{name}: predicting it needs about {working / 2**20:,.0f} MB, more than this server gives one "
            f"request ({limits.max_memory_mb:g} MB, its max_memory_mb). Send a smaller scan, or ask whoever runs "
            "the server to raise max_memory_mb"
        )

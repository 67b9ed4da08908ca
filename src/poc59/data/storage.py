"""Where a sample's pixels are in the preloaded tensors: the dense canvas layout or the ragged one.

Dense (policy resize, pad): images [N, 3, S, S] and masks [N, S, S], sample i's content the top-left
(h, w) of its canvas. Ragged (policy crop): flat images [3 x P] and masks [P], sample i's [3, h, w]
image block at 3 x offsets[i] and its [h, w] mask at offsets[i], nothing stored past its content.
Windows are cut the same way from both: what lies past the content is image 0 and mask ignore, in
the output buffers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from poc59.data.sources import Sample


def image_view(images: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor | None, i: int) -> torch.Tensor:
    """Sample i's image content [3, h, w], a view."""
    h, w = (int(v) for v in sizes[i])
    if offsets is None:
        return images[i, :, :h, :w]
    o = 3 * int(offsets[i])
    return images[o : o + 3 * h * w].view(3, h, w)


def mask_view(masks: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor | None, i: int) -> torch.Tensor:
    """Sample i's mask content [h, w], a view."""
    h, w = (int(v) for v in sizes[i])
    if offsets is None:
        return masks[i, :h, :w]
    o = int(offsets[i])
    return masks[o : o + h * w].view(h, w)


def copy_window(
    image: torch.Tensor,
    mask: torch.Tensor,
    y: int,
    x: int,
    image_out: torch.Tensor,
    mask_out: torch.Tensor,
    ignore: int,
) -> None:
    """The window of one sample's content (`image` [3, h, w], `mask` [h, w]) at (y, x), of `mask_out`'s
    size, into the buffers; past the content: image 0, mask `ignore`."""
    s_h, s_w = mask_out.shape
    h, w = mask.shape
    hh, ww = max(0, min(s_h, h - y)), max(0, min(s_w, w - x))
    on_cpu = image_out.device.type == "cpu" and image.device.type == "cpu"
    if hh < s_h or ww < s_w:
        if on_cpu:  # NumPy, as the copies below: torch's intra-op pool waits on cores other work holds
            image_out.numpy().fill(0)
            mask_out.numpy().fill(ignore)
        else:
            image_out.zero_()
            mask_out.fill_(ignore)
    if not (hh and ww):
        return
    if on_cpu:
        np.copyto(image_out[:, :hh, :ww].numpy(), image[:, y : y + hh, x : x + ww].numpy())
        np.copyto(mask_out[:hh, :ww].numpy(), mask[y : y + hh, x : x + ww].numpy())
    else:
        image_out[:, :hh, :ww].copy_(image[:, y : y + hh, x : x + ww])
        mask_out[:hh, :ww].copy_(mask[y : y + hh, x : x + ww])


@dataclass
class Preloaded:
    """The decoded set: images [N,3,H,W] uint8, masks [N,H,W] uint8 (255 = ignore), or, ragged
    (`offsets` set, policy=crop), flat images [3 x P] and masks [P] holding each sample's content only.

    `sizes` [N,2] holds each sample's (height, width) of real content (on a canvas the rest is padding,
    label 255); `offsets` [N] each ragged sample's first pixel (its image block starts at 3 x that);
    `samples` are the pairs kept, in tensor order; `skipped` lists files left out under
    `on_bad_file=skip`; `label_counts` [N,256] int64 holds each stored mask's pixels per label value
    (None for a cache written before it was kept). Read samples with `image(i)`, `mask(i)` and
    `window_into`, which work in both layouts.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    source: str = "decoded"  # or "cache"
    key: str = ""
    label_counts: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    @property
    def ragged(self) -> bool:
        return self.offsets is not None

    def image(self, i: int) -> torch.Tensor:
        """Sample i's image content [3, h, w] (a view; no canvas padding)."""
        return image_view(self.images, self.sizes, self.offsets, i)

    def mask(self, i: int) -> torch.Tensor:
        """Sample i's mask content [h, w] (a view)."""
        return mask_view(self.masks, self.sizes, self.offsets, i)

    def window_into(
        self, i: int, y: int, x: int, image_out: torch.Tensor, mask_out: torch.Tensor, ignore_index: int = 255
    ) -> None:
        """Copy the window of sample i at (y, x), of `mask_out`'s size, into the buffers (see copy_window)."""
        copy_window(self.image(i), self.mask(i), y, x, image_out, mask_out, ignore_index)

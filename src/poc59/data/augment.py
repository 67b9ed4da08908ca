"""Augmentation of whole uint8 batches on the device.

Each sample draws its own flips and rotation; image and mask always move
together, and because only flips and 90-degree rotations are used no pixel is
interpolated, so 255 stays 255 and labels stay labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlipRotate:
    """Horizontal flip, vertical flip and a 90-degree rotation, each with its own probability."""

    hflip: float = 0.5
    vflip: float = 0.3
    rot90: float = 0.3

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,C,H,W], masks [B,H,W]; the decisions are drawn on the CPU from `generator`."""
        if self.rot90 > 0 and images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rot90 needs square batches, got {tuple(images.shape[-2:])}; set data.augment.rot90=0")
        draws = torch.rand((3, images.shape[0]), generator=generator).to(images.device, non_blocking=True)
        masks = masks.unsqueeze(1)
        ops = (
            (self.hflip, lambda t: t.flip(-1)),
            (self.vflip, lambda t: t.flip(-2)),
            (self.rot90, lambda t: t.rot90(1, (-2, -1))),
        )
        for draw, (p, op) in zip(draws, ops):
            images, masks = _where(draw < p, op, images, masks)
        return images, masks.squeeze(1)


def _where(chosen: torch.Tensor, op, images: torch.Tensor, masks: torch.Tensor):
    """Apply `op` to the chosen samples only (to all at once when every sample is chosen)."""
    if not bool(chosen.any()):
        return images, masks
    sel = chosen.view(-1, 1, 1, 1)
    return torch.where(sel, op(images), images), torch.where(sel, op(masks), masks)

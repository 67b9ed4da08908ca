"""The network as every command uses it: uint8 RGB images in, float32 logits out, normalisation inside.

Training (the LightningModule holds one), evaluation, prediction and export run this same module, so the
input normalisation is written once and an exported graph carries it.
"""

from __future__ import annotations

import torch
from torch import nn


class Segmenter(nn.Module):
    """uint8 (or 0-255 float) RGB [B, 3, H, W] -> logits [B, C, H, W]: ``net((x - 255 mean) / (255 std))``.

    `mean` / `std` are per channel on the 0-1 scale (ImageNet's for pretrained encoders). They are buffers
    outside the state dict: the model card records them, and they move with `.to(device)`.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, persistent=False
        )
        self.memory_format = torch.contiguous_format  # torch.channels_last on CUDA (see SegmentationModule)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.net(x.contiguous(memory_format=self.memory_format))

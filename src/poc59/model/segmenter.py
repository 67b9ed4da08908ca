"""The network as every command uses it: uint8 RGB images in, float32 logits out, normalisation inside.

Training (the LightningModule holds one), evaluation, prediction and export run this same module, so the
input normalisation is written once and an exported graph carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


NET_PREFIX = "segmenter.net."  # where a training checkpoint's state_dict keeps the network's weights


def migrate_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """In place: a training checkpoint's weights under the LightningModule's names. Checkpoints written before
    the module held a Segmenter kept the network under `net.`; it is `segmenter.net.` now."""
    for key in [k for k in state if k.startswith("net.")]:
        state["segmenter." + key] = state.pop(key)
    return state


def network_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The network's weights (the state dict of `Segmenter.net`) from a training checkpoint's state_dict,
    whichever poc59 version wrote it (`migrate_state_dict`); the checkpoint's own dict is left as it is."""
    state = migrate_state_dict(dict(state_dict))
    return {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}

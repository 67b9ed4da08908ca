"""Tiny stand-in models for prediction tests: known outputs, milliseconds per tile."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from poc59.artifacts.card import ModelCard
from poc59.artifacts.trained import TrainedModel
from poc59.core.classes import ClassTable


class Constant(nn.Module):
    """The same logits everywhere, whatever the input: blending must keep them exactly so (no seams)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2], x.shape[3]).clone()


class TilePosition(nn.Module):
    """Logits that depend on the position inside the tile (0 at its left edge, 1 at its right): the worst case
    for seams, since neighbouring tiles disagree most at their edges."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ramp = torch.linspace(0.0, 1.0, w).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([ramp, 1 - ramp], dim=1)


class LocalConv(nn.Module):
    """A seeded 2-layer convolution on 0-1 pixels: local, image-dependent, different per class."""

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x.float() / 255.0)))


def model(
    segmenter: nn.Module,
    policy: str = "crop",
    image_size: int = 32,
    classes: int | None = None,
    max_side: int | None = None,
) -> TrainedModel:
    """A TrainedModel around a stand-in segmenter (class names c0, c1, ...)."""
    if classes is None:
        with torch.no_grad():
            classes = segmenter(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[1]
    table = ClassTable.from_names([f"c{i}" for i in range(classes)])
    card = ModelCard(
        table,
        {"mean": [0, 0, 0], "std": [1, 1, 1]},
        {},
        {"policy": policy, "image_size": image_size, "max_side": max_side},
        input_multiple=image_size,
    )
    return TrainedModel(segmenter=segmenter.eval(), card=card, source=Path("stand-in"))

"""The pictures of an evaluation, drawn by poc59.analysis.pictures into the metrics.json folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from poc59.analysis.pictures import (
    confusion_matrix_figure,
    iou_bars_figure,
    sample_grid_figure,
)
from poc59.artifacts.trained import TrainedModel
from poc59.data.datamodule import SegmentationDataModule


def draw(
    metrics: dict,
    model: TrainedModel,
    dm: SegmentationDataModule,
    indices: list[int],
    image_miou: list[float],
    grids: dict[str, list[int]],
    folder: Path,
    predict: Callable[[list[int]], np.ndarray],
) -> dict[str, str]:
    """Confusion matrix, IoU bars with intervals, and image grids (a class-covering sample, the worst).

    `image_miou` is each image's own mIoU (NaN: nothing scored); `grids` names each grid's images
    (positions in `indices`), e.g. {"sample": ..., "worst": worst k}; `predict(sample indices)` gives
    label maps [n, H, W] on the stored canvas. Each panel is cropped to its image's content (no canvas
    padding). Returns {picture: path relative to `folder`}.
    """
    classes, where = model.classes, f"{metrics['split']} split, {metrics['num_images']} images"
    out = {
        "confusion_matrix": confusion_matrix_figure(
            np.asarray(metrics["confusion_matrix"]),
            classes,
            folder / "confusion_matrix.png",
            title=f"Confusion matrix, row-normalised ({where})",
        ),
        "iou_bars": iou_bars_figure(
            {n: row["iou"] for n, row in metrics["per_class"].items()},
            {n: tuple(row["iou_ci"]) if row["iou_ci"] else None for n, row in metrics["per_class"].items()},
            classes,
            folder / "iou_bars.png",
            f"IoU per class ({where}; {100 * metrics['bootstrap']['level']:g} % bootstrap intervals over images)",
        ),
    }
    for name, positions in grids.items():
        if not positions:
            continue
        chosen = [indices[p] for p in positions]
        titles = [
            f"{dm.samples[indices[p]].id}\nimage mIoU "
            + ("n/a" if np.isnan(image_miou[p]) else f"{100 * image_miou[p]:.1f} %")
            for p in positions
        ]
        masks = [dm.data.mask(i).numpy() for i in chosen]  # each image's content, no canvas padding
        preds = predict(chosen)
        out[name] = sample_grid_figure(
            [dm.data.image(i).permute(1, 2, 0).numpy() for i in chosen],
            masks,
            [p[: m.shape[0], : m.shape[1]] for p, m in zip(preds, masks)],
            classes,
            folder / f"{name}.png",
            titles,
        )
    return {name: str(Path(path).relative_to(folder)) for name, path in out.items()}

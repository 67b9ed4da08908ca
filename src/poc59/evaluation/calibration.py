"""A run's images for an int8 export (poc59.artifacts.export.RunImages): training images to calibrate on,
validation images to score the fp32 and int8 models on.

Both are the run's own (config.yaml, split.json), fed as training validation feeds them (`open_target`,
`score_statistics`): the int8 model's mIoU is the same convention, on the same images, as the run's val/mIoU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poc59.artifacts.trained import TrainedModel
from poc59.evaluation.passes import score_statistics
from poc59.evaluation.run import Target, open_target

CALIBRATION_SEED = 0  # which training images calibrate: a seeded sample, the same every export of a run


class RunImages:
    """See the module docstring; `open_run_images` builds it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        dm = target.dm
        index = {s.id: i for i, s in enumerate(dm.samples)}
        self.train = [index[i] for i in dm.split["train"]]

    def calibration(self, n: int) -> Iterator[np.ndarray]:
        """uint8 [B, 3, H, W] batches of `n` training images (all of them when the run has fewer), sampled
        with CALIBRATION_SEED, at the training size (tiles of them under policy=crop)."""
        rng = np.random.default_rng(CALIBRATION_SEED)
        chosen = sorted(rng.choice(self.train, size=min(n, len(self.train)), replace=False).tolist())
        self.calibrated = len(chosen)
        dm = self.target.dm
        for images, _ in dm.feed(chosen, train=False, batch_size=dm.batch_size, device=torch.device("cpu")):
            yield images.cpu().numpy()

    def statistics(self, segmenter: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every registered statistic of each validation image as `segmenter` labels it (CPU, float32)."""
        t = self.target
        model = TrainedModel(segmenter, t.model.card, t.ckpt, t.run)
        per_image, _ = score_statistics(model, t.dm, t.indices, t.dm.batch_size, torch.device("cpu"), t.autocast)
        return per_image

    def describe(self) -> dict[str, Any]:
        t = self.target
        return {
            "split_file": str(t.run / "split.json"),
            "split_fingerprint": t.dm.split["fingerprint"],
            "training_images": len(self.train),
            "calibrated_on": getattr(self, "calibrated", None),
            "calibration_seed": CALIBRATION_SEED,
            "validation_images": len(t.indices),
            "data_root": str(t.dm.root),
            "data_changed": t.data_changed,
        }


def open_run_images(model: TrainedModel, run: Path) -> RunImages:
    """The images of `run` (which trained `model`): its data as evaluate opens it, on CPU; data files changed
    since training are scored as they are now, with a warning (the card records the change)."""
    target = open_target(run, model.source, "val", None, None, "cpu", allow_changed_data=True)
    return RunImages(target)

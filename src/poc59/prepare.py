"""`python -m poc59.prepare [the same overrides as training]`: check and cache the data before a run.

Composes the training config, so `data=...`, `data.root=...`, `data.image_size=...`
mean exactly what they mean to `poc59.train`. Validates every pair, builds the
preload cache and the class weights, and prints a report: images, split sizes,
pixels per class by name, class weights and RAM. Run it on a login node (or in
an interactive job) so the training jobs of a sweep start from a warm cache.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from poc59.core.cli import DONE, run_command
from poc59.core.config import SettingError
from poc59.core.logs import print_titled, results_console
from poc59.core.overrides import ConfigCommand, compose_train, split_argv

if TYPE_CHECKING:
    from poc59.data.datamodule import SegmentationDataModule

log = logging.getLogger("poc59.prepare")


def report(dm: SegmentationDataModule, console: Console) -> dict:
    """Print the data report and return it as a plain dict."""
    split = dm.split
    names = dm.classes.names
    sides = {"train": split["train"], "val": split["val"], "test": split["test"]}
    index = {s.id: i for i, s in enumerate(dm.samples)}
    labels = dm.label_counts()[:, : len(names)]  # the preload's: no pass over the masks
    counts = {
        side: labels[[index[i] for i in ids]].sum(0).tolist() if ids else [0] * len(names)
        for side, ids in sides.items()
    }
    weights = dm.class_weights_record["weights"]

    scale = (
        f"at native scale (long side up to {dm.max_side} px; training windows {dm.image_size} px)"
        if dm.policy == "crop"
        else f"at {dm.image_size} px"
    )
    table = Table(title=f"Pixels per class {scale} (ignore label excluded), and loss weights")
    table.add_column("id", justify="right")
    table.add_column("class", no_wrap=True, min_width=max(map(len, names)))
    for side in sides:
        table.add_column(f"{side} pixels", justify="right")
    table.add_column("train %", justify="right")
    table.add_column("weight", justify="right")
    total_train = sum(counts["train"]) or 1
    for c, name in enumerate(names):
        table.add_row(
            str(c),
            name,
            *(f"{counts[side][c]:,}" for side in sides),
            f"{100 * counts['train'][c] / total_train:.3f}",
            f"{weights[c]:.3f}",
        )
    print_titled(console, table)
    d = dm.describe()
    console.print(
        f"Images: {d['images']} pairs ({len(d['skipped_files'])} skipped); split by source image "
        f"(seed {dm.seed}): {len(split['train'])} train / {len(split['val'])} validation / {len(split['test'])} test, "
        f"fingerprint {split['fingerprint']}"
    )
    layout = "ragged, each image at its own size" if dm.data.ragged else f"canvas {dm.data.images.shape[-1]} px"
    console.print(
        f"Preload: {d['preload_bytes'] / 2**20:.1f} MiB of uint8 in RAM ({d['policy']}, {layout}), "
        f"{d['preload_seconds']:.2f} s ({d['preload_source']})"
    )
    for skipped in d["skipped_files"]:
        console.print(f"Skipped {skipped['id']}: {skipped['reason']}")
    return {"describe": d, "pixels": counts, "class_weights": weights, "split": split}


SUMMARY = (
    "Check and cache the data of a training run: validate every pair, build the preload cache and the class\n"
    "weights, print the split and the pixels per class. Takes the same overrides as python -m poc59.train:\n"
    "  python -m poc59.prepare data=artefact data.root=/data/artefact data.image_size=384"
)


CLI = ConfigCommand("python -m poc59.prepare", SUMMARY)


def _prepare(options: dict[str, Any]) -> int:
    cfg = compose_train(split_argv(options["argv"])[0])
    try:
        dm: SegmentationDataModule = instantiate(cfg.data)
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):  # the data module's own checks of its settings raise these
            raise
        raise err.__cause__ from None
    dm.prepare_data()
    dm.setup("fit")
    report(dm, results_console())
    return DONE


def main(argv: list[str] | None = None) -> int:
    """Check the overrides (exit 2 with the fix, before anything is read or imported), answer --help, then
    prepare the data (`argv`: sys.argv[1:] if None)."""
    return run_command(CLI, argv, _prepare, ("poc59.data.sources:DataError", SettingError, ValueError), log)


if __name__ == "__main__":
    sys.exit(main())

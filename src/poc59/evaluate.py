"""Score a trained model on the images its run validated on (or its test split, or another folder).

    python -m poc59.evaluate run_dir=outputs/runs/<name>            # best.ckpt on the run's validation split
    python -m poc59.evaluate run_dir=... split=test                 # the held-out test split (data.test_fraction)
    python -m poc59.evaluate ckpt=model.ckpt data.root=/data/other  # another folder: all its images by default
    python -m poc59.evaluate sweep=outputs/sweeps/<date_time>       # every finished run of a sweep

Options: split=val|test|all, data.root=DIR, bootstrap.resamples=1000, bootstrap.seed=0,
bootstrap.level=0.95, batch_size=N (default: the run's), device=auto|cpu|cuda, out=DIR,
pictures=true|false, worst_k=8.

The images, split and geometry are the run's own (its config.yaml and split.json), fed by the
same BatchFeed as training validation, so the run's best val/mIoU is reproduced. Writes
metrics.json (atomically) into <run>/evaluation/<split>/ and prints a table.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console

from poc59.artifacts.trained import ModelLoadError
from poc59.core.cli import parse_key_values
from poc59.core.device import DeviceError
from poc59.data.sources import DataError
from poc59.evaluation.report import print_report
from poc59.evaluation.run import EvaluateError, evaluate_run
from poc59.evaluation.sweep import evaluate_all

log = logging.getLogger("poc59.evaluate")


USAGE = (
    "usage: python -m poc59.evaluate run_dir=<run folder> | ckpt=<file> [data.root=<folder>] | sweep=<sweep folder>\n"
    "       [split=val|test|all] [bootstrap.resamples=1000] [bootstrap.seed=0] [bootstrap.level=0.95]\n"
    "       [batch_size=N] [device=auto|cpu|cuda] [out=<folder>] [pictures=true|false] [worst_k=8]\n"
    "       [mode=training_resolution|native] [overlap=0.25] [tta=false]"
)


_KEYS = {  # command-line key -> (evaluate_run keyword, type)
    "run_dir": ("run_dir", str),
    "ckpt": ("ckpt", str),
    "sweep": ("sweep", str),
    "split": ("split", str),
    "data.root": ("data_root", str),
    "bootstrap.resamples": ("resamples", int),
    "bootstrap.seed": ("seed", int),
    "bootstrap.level": ("level", float),
    "batch_size": ("batch_size", int),
    "device": ("device", str),
    "out": ("out", str),
    "pictures": ("pictures", bool),
    "worst_k": ("worst_k", int),
    "mode": ("mode", str),
    "overlap": ("overlap", float),
    "tta": ("tta", bool),
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    """evaluate_run keywords (plus `sweep`) from key=value arguments."""
    given = parse_key_values(argv, {key: kind for key, (_, kind) in _KEYS.items()}, USAGE, EvaluateError)
    return {_KEYS[key][0]: value for key, value in given.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        options = parse_args(list(sys.argv[1:] if argv is None else argv))
        sweep = options.pop("sweep", None)
        if sweep is not None:
            return 0 if evaluate_all(sweep, **options)["counts"]["failed"] == 0 else 1
        print_report(evaluate_run(**options), Console())
    except (EvaluateError, DataError, ModelLoadError, DeviceError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

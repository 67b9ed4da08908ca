"""`python -m poc59.evaluate key=value ...`: score a trained model (`--help` lists every key)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from poc59.core.cli import DONE, PARTIAL, PARTIAL_NOTE, Command, Key, Paths, run_command
from poc59.core.config import SettingError

log = logging.getLogger("poc59.evaluate")


CLI = Command(
    prog="python -m poc59.evaluate",
    summary="Score a trained model on the images its run validated on (or its test split, another folder, "
    "or every run of a sweep): IoU per class with bootstrap intervals, pictures, metrics.json.",
    examples=(
        "python -m poc59.evaluate run_dir=outputs/runs/<name>            # best.ckpt on the run's validation split",
        "python -m poc59.evaluate run_dir=... split=test                 # the held-out test split (data.test_fraction)",
        "python -m poc59.evaluate ckpt=model.ckpt data.root=/data/other  # another folder: all its images by default",
        "python -m poc59.evaluate sweep=outputs/sweeps/<date_time>       # every finished run of a sweep",
        "python -m poc59.evaluate run_dirs=[sweep/0,sweep/1,sweep/2]     # their fold ensemble, on split=test",
    ),
    keys=(
        Key(
            "run_dir", str, "a run folder (python -m poc59.train writes it): its checkpoints/best.ckpt, data and split"
        ),
        Key("ckpt", Paths, "a checkpoint or exported model (default: the run's best.ckpt); [a,b]: an ensemble"),
        Key("run_dirs", list, "an ensemble of these runs' best.ckpt (fold ensembles: on split=test)", default=None),
        Key("sweep", str, "a sweep folder: evaluate every finished run (other keys apply to each)", default=None),
        Key("split", str, "val | test | all (default: val on the run's own data, all on data.root)"),
        Key("data.root", str, "another ARTeFACT-layout folder to score, at the model's geometry"),
        Key("bootstrap.resamples", int, "bootstrap resamples over images, for every interval", dest="resamples"),
        Key("bootstrap.seed", int, "seed of the bootstrap", dest="seed"),
        Key("bootstrap.level", float, "confidence level of the intervals", dest="level"),
        Key("batch_size", int, "images (or tiles) per forward pass (default: the run's)"),
        Key("device", str, "auto | cpu | cuda | cuda:N"),
        Key("out", str, "output folder (default: <run>/evaluation/<split>)"),
        Key("pictures", bool, "confusion matrix, IoU bars, sample and worst-image grids"),
        Key("worst_k", int, "how many worst images the grid shows"),
        Key("mode", str, "training_resolution (as validation saw them) | native (full resolution, predict's path)"),
        Key("overlap", float, "mode=native: sliding-window overlap between tiles"),
        Key("tta", bool, "mode=native: average with the flipped image's prediction"),
        Key(
            "allow_changed_data",
            bool,
            "score the run's data even where its files changed since training (named; recorded in metrics.json)",
        ),
        Key(
            "threads",
            Any,
            "CPU threads: auto (the CPUs this job may use, less those busy with other work) | N",
            default="auto",
        ),
    ),
    notes="The images, split and geometry are the run's own (config.yaml, split.json), fed as training validation "
    "fed them, so the run's best val/mIoU is reproduced; files changed since training are named and refused "
    "unless allow_changed_data=true. Exit 0 done, 2 a bad setting, 1 a bug; with sweep=, "
    f"{PARTIAL_NOTE}: a run that could not be evaluated.",
    fills="poc59.evaluation.run:evaluate_run",
)
USER_ERRORS = (
    "poc59.evaluation.run:EvaluateError",
    "poc59.data.sources:DataError",
    "poc59.artifacts.trained:ModelLoadError",
    "poc59.core.device:DeviceError",
    SettingError,
)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """evaluate_run keywords (plus `sweep`) from key=value arguments; a bad one is an EvaluateError."""
    from poc59.evaluation.run import EvaluateError

    return CLI.parse(argv, error=EvaluateError)


def _evaluate(options: dict[str, Any]) -> int:
    from poc59.core.logs import results_console
    from poc59.core.threads import set_threads
    from poc59.evaluation.report import print_report
    from poc59.evaluation.run import evaluate_run
    from poc59.evaluation.sweep import evaluate_all

    set_threads(options.pop("threads", "auto"))
    sweep = options.pop("sweep", None)
    if sweep is not None:
        return DONE if evaluate_all(sweep, **options)["counts"]["failed"] == 0 else PARTIAL
    print_report(evaluate_run(**options), results_console())
    return DONE


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _evaluate, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())

"""Which encoder to ship: compare the runs of a sweep (or any run folders) on one split.

    python -m poc59.compare sweep=outputs/sweeps/<date_time>            # writes <sweep>/comparison/
    python -m poc59.compare runs=[outputs/runs/a,outputs/runs/b] out=cmp  # any finished runs
    python -m poc59.compare sweep=... evaluate=false                     # no evaluation for missing intervals

Reads each run's summary.json and config.yaml. The interval of a run's best val mIoU comes from
<run>/evaluation/val/metrics.json (python -m poc59.evaluate); with evaluate=true (the default) a
missing one, or one that scored another checkpoint than the run's best now, is computed first (numbers only; `python -m poc59.evaluate sweep=...` also draws the
pictures). Runs whose configurations differ only by the seed are one configuration: mean, std,
min..max over seeds. Configurations are ranked by (mean) best val mIoU, and the best's lead over
the runner-up is checked against their intervals.

Runs validated on different splits (summary provenance.data.split_fingerprint) or with different
class tables are never ranked: compare stops, names them and says how to fix it.

Writes comparison.md, comparison.csv, comparison.json and per_class_iou.png (atomically) into
out= (default <sweep>/comparison, or outputs/comparisons/<date_time> for runs=), and prints the
table. A folder that already holds a comparison is replaced only with overwrite=true (as predict's
output=); an evaluation is used only for the checkpoint it scored (a resumed run's new best.ckpt is
evaluated again). Exit status 0, 2 on bad arguments or runs that cannot be ranked together.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from poc59.core.cli import Command, Key, run_command

log = logging.getLogger("poc59.compare")


CLI = Command(
    prog="python -m poc59.compare",
    summary="Which encoder to ship: compare the runs of a sweep (or any run folders) on one split, class by "
    "class, with their uncertainty.",
    examples=(
        "python -m poc59.compare sweep=outputs/sweeps/<date_time>            # writes <sweep>/comparison/",
        "python -m poc59.compare runs=[outputs/runs/a,outputs/runs/b] out=cmp  # any finished runs",
        "python -m poc59.compare sweep=... evaluate=false                     # no evaluation for missing intervals",
        "python -m poc59.compare sweep=... overwrite=true                     # replace <sweep>/comparison/",
    ),
    keys=(
        Key("sweep", str, "a sweep folder (python -m poc59.train -m ... writes it)"),
        Key("runs", list, "run folders instead of a sweep: [a,b] or a,b"),
        Key("out", str, "output folder (default: <sweep>/comparison, or outputs/comparisons/<date_time>)"),
        Key(
            "evaluate",
            bool,
            "evaluate runs whose evaluation/val/metrics.json is missing or scored another checkpoint (for intervals)",
        ),
        Key("overwrite", bool, "replace a comparison already in out= (without it, compare stops and says so)"),
        Key(
            "monitor",
            str,
            "the validation metric that ranks the configurations, e.g. val/fwIoU (default: the one the runs picked "
            "their best epoch by, their own monitor setting)",
        ),
    ),
    notes="Writes comparison.md, .csv, .json and per_class_iou.png. Exit 0 done, 2 bad arguments or runs that "
    "cannot be ranked together (another split or class table: named, with the fix).",
    fills="poc59.comparison.run:compare",
)
USER_ERRORS = ("poc59.comparison.run:CompareError", FileNotFoundError)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """compare() keywords from key=value arguments (runs= is a list: [a,b] or a,b); a bad one is a CompareError."""
    from poc59.comparison.run import CompareError

    return CLI.parse(argv, error=CompareError)


def _compare(options: dict[str, Any]) -> int:
    from poc59.comparison.report import print_table
    from poc59.comparison.run import compare
    from poc59.core.logs import results_console

    print_table(compare(**options), results_console())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _compare, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())

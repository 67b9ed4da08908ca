"""Turn ARTeFACT's published parquet shards into the folder layout poc59 trains from.

    python -m poc59.import_parquet src=SRC out=OUT [max_side=N] [overwrite=true]

See `poc59.data.import_parquet` for the checks made on the way; metadata.csv is written last, the
marker of a complete import.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from poc59.core.cli import Command, Key, run_command

log = logging.getLogger("poc59.import_parquet")


CLI = Command(
    prog="python -m poc59.import_parquet",
    summary="Turn ARTeFACT's Hugging Face parquet shards into images/, annotations/, annotations_rgb/ and "
    "metadata.csv (written last: the marker of a complete import).",
    examples=("python -m poc59.import_parquet src=/path/to/damaged-media/data out=/data/artefact max_side=1024",),
    keys=(
        Key("src", str, "a .parquet file, or a folder searched recursively for *.parquet", required=True),
        Key("out", str, "the output folder (empty or absent unless overwrite=true)", required=True),
        Key("max_side", int, "cap the long side at this many pixels, keeping the aspect ratio (none: keep)"),
        Key("overwrite", bool, "replace images/, annotations/, annotations_rgb/ and metadata.csv in out"),
    ),
    notes="Exit 0 done, 2 a bad input or setting (named, with the fix).",
    fills="poc59.data.import_parquet:import_parquet",
)


def _import(options: dict[str, Any]) -> int:
    from poc59.data.import_parquet import import_parquet

    n = import_parquet(Path(options.pop("src")), Path(options.pop("out")), **options)
    log.info("done: %d rows", n)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _import, ("poc59.data.sources:DataError", OSError), log)


if __name__ == "__main__":
    sys.exit(main())

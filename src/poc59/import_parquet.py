"""Turn ARTeFACT's published parquet shards into the folder layout poc59 trains from.

    python -m poc59.import_parquet SRC OUT [--max-side N] [--overwrite]

See `poc59.data.import_parquet` for the checks made on the way; metadata.csv is written last, the
marker of a complete import.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from poc59.data.import_parquet import import_parquet
from poc59.data.sources import DataError

log = logging.getLogger("poc59.import_parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m poc59.import_parquet",
        description="Turn ARTeFACT's Hugging Face parquet shards into images/, annotations/, "
        "annotations_rgb/ and metadata.csv (written last: the marker of a complete import).",
    )
    parser.add_argument("src", type=Path, help="a .parquet file or a folder searched recursively for *.parquet")
    parser.add_argument("out", type=Path, help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument(
        "--max-side", type=int, default=None, metavar="N", help="cap the long side at N px, keeping aspect"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace images/, annotations/, annotations_rgb/ and metadata.csv in OUT",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        n = import_parquet(args.src, args.out, max_side=args.max_side, overwrite=args.overwrite)
    except (DataError, OSError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    log.info("done: %d rows in %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

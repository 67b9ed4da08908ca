"""Writing the synthetic set in the ARTeFACT layout: `generate` into a new folder, `ensure_synthetic` for a
cached set (reused, replaced or refused), and the `python -m poc59.data.synthetic` command."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from poc59.core import publish
from poc59.core.cli import Command, Key, run_command
from poc59.core.progress import Steps
from poc59.data.synthetic.artworks import augment_copy, render

log = logging.getLogger(__name__)


GENERATOR_VERSION = 1
"""Bump whenever the pixels change: a cached set with another version is regenerated."""

MARKER = ".complete"
"""Written last (inside the temporary folder, before the rename): its presence means a complete set."""
METADATA_COLUMNS: tuple[str, ...] = ("id", "material", "content", "image_path", "annotation_path", "width", "height")
PNG_COMPRESS_LEVEL = 1  # zlib level: the grain makes higher levels barely smaller and 2-4x slower


# -- writing a set ---------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _write_group(root: Path, index: int, seed: int, aug_copies: int) -> list[dict[str, object]]:
    """Render original `index`, write it and its copies, return their metadata rows."""
    img, lab, material, content = render(index, seed)
    aug_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    stem = f"syn{index:05d}"
    rows = []
    pairs = [(stem, img, lab)]
    for k in range(1, aug_copies + 1):
        pairs.append((f"{stem}_aug{k}", *augment_copy(img, lab, k, aug_rng)))
    for name, im, lb in pairs:
        (root / "images" / f"{name}.png").write_bytes(_png(im))
        (root / "annotations" / f"{name}.png").write_bytes(_png(lb))
        rows.append(
            {
                "id": name,
                "material": material,
                "content": content,
                "image_path": f"images/{name}.png",
                "annotation_path": f"annotations/{name}.png",
                "width": im.shape[1],
                "height": im.shape[0],
            }
        )
    return rows


def _marker(n: int, seed: int, aug_copies: int) -> dict[str, object]:
    return {
        "generator": "poc59.data.synthetic",
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "aug_copies": aug_copies,
    }


def _check_args(n: int, seed: int, aug_copies: int) -> tuple[int, int, int]:
    n, seed, aug_copies = int(n), int(seed), int(aug_copies)
    if n < 1:
        raise ValueError(f"n must be >= 1 (originals to generate), got {n}")
    if aug_copies < 0:
        raise ValueError(f"aug_copies must be >= 0, got {aug_copies}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return n, seed, aug_copies


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def generate(out: str | Path, n: int, seed: int = 0, aug_copies: int = 3, *, workers: int | None = None) -> Path:
    """Write n originals (+ aug_copies copies each) to `out` in the ARTeFACT layout; return `out`.

    Atomic: everything goes into a hidden temporary sibling folder, the
    `.complete` marker last, then one rename puts it in place, so `out` is
    either absent or complete. Refuses if `out` exists and is non-empty (it
    never deletes anything). Output is byte-identical for the same (n, seed,
    aug_copies) whatever `workers` is (threads: numpy, zlib and most of Pillow
    release the GIL).
    """
    n, seed, aug_copies = _check_args(n, seed, aug_copies)
    out = Path(out).expanduser()
    if _is_nonempty_dir(out) or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another folder or delete it first")
    for dead in publish.remove_dead_of(out):
        log.info("Removed %s: the temporary folder of a synthetic set whose writer was killed", dead)
    tmp = publish.temporary(out)
    start = time.perf_counter()
    try:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        workers = _default_workers() if workers is None else max(1, int(workers))
        groups = []
        with (
            ThreadPoolExecutor(workers) as pool,
            Steps(log, "synthetic set", n, "originals") as steps,
        ):
            for group in pool.map(lambda i: _write_group(tmp, i, seed, aug_copies), range(n)):
                groups.append(group)
                steps.advance()
        with (tmp / "metadata.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for rows in groups:
                writer.writerows(rows)
        (tmp / MARKER).write_text(json.dumps(_marker(n, seed, aug_copies), sort_keys=True) + "\n")
        publish.publish(tmp, out)  # FileExistsError when someone else filled `out` meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "synthetic set: %d originals + %d copies in %.1f s -> %s", n, n * aug_copies, time.perf_counter() - start, out
    )
    return out


def _read_marker(out: Path) -> dict | None:
    """The `.complete` marker this module wrote, or None (absent, unreadable, or someone else's file)."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == "poc59.data.synthetic" else None


def ensure_synthetic(out: str | Path, n: int, seed: int = 0, aug_copies: int = 3) -> Path:
    """Return `out` holding the synthetic set (n, seed, aug_copies), generating it only if needed.

    - a complete set with the same parameters and GENERATOR_VERSION (its
      `.complete` marker) is used as is: nothing is rewritten;
    - a set this module made with other parameters or an older version
      (a marker that differs) is replaced atomically;
    - a missing or empty folder is generated;
    - a non-empty folder WITHOUT a marker is an error: it is not ours (our
      writes are atomic, so a half-written set never sits at `out`), and we
      never delete data we did not write.
    Safe for concurrent callers: the set's lock (`poc59.core.publish.lock`)
    serialises them, and where it cannot (a filesystem without locks) the
    loser of the rename race uses the winner's identical folder.
    """
    n, seed, aug_copies = _check_args(n, seed, aug_copies)
    out = Path(out).expanduser()
    want = _marker(n, seed, aug_copies)
    with publish.lock(out):
        have = _read_marker(out)
        if have is None and _is_nonempty_dir(out):
            have = _read_marker(out)  # re-read: a racer without the lock may have just renamed its set in
            if have is None:
                raise FileExistsError(
                    f"{out} is not empty and holds no synthetic set (no {MARKER} marker); "
                    "point the synthetic data root at an empty or new folder, or delete this one"
                )
        if have == want:
            log.debug("synthetic set already complete at %s", out)
            return out
        if have is not None:
            log.warning("%s holds a synthetic set made with %s; regenerating for %s", out, have, want)
            publish.discard(out)
        log.info("generating the synthetic set (n=%d, seed=%d, %d copies each) into %s", n, seed, aug_copies, out)
        try:
            return generate(out, n, seed, aug_copies)
        except FileExistsError:
            if _read_marker(out) == want:  # another process won the race with the same set
                return out
            raise


# -- command line ----------------------------------------------------------------------------------

CLI = Command(
    prog="python -m poc59.data.synthetic",
    summary="Write a new built-in synthetic damage set (ARTeFACT layout, 16 classes) into an empty folder.",
    examples=("python -m poc59.data.synthetic out=/tmp/synthetic n=100 seed=0",),
    keys=(
        Key("out", str, "the folder to write (must be empty or absent)", required=True),
        Key("n", int, "originals", default=100),
        Key("seed", int, "seed of the whole set", default=0),
        Key("aug", int, "stored _augK copies of each original", default=3, dest="aug_copies"),
        Key("workers", int, "processes drawing the images (default: the CPUs this process may use)", default=None),
    ),
    notes="Exit 0 done, 2 a bad setting or a folder that is not empty.",
)


def _generate(options: dict[str, Any]) -> int:
    generate(options.pop("out"), options.pop("n", 100), options.pop("seed", 0), options.pop("aug_copies", 3), **options)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m poc59.data.synthetic out=DIR [n=100] [seed=0] [aug=3]`: write a new set (refuses a non-empty DIR)."""
    return run_command(CLI, argv, _generate, (FileExistsError,), log)

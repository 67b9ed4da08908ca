"""What the benchmarks share: the generated data set, the sizes, interleaved timing, page-cache control, rows.

The data set is generated once into `$POC59_CACHE/bench` (else ~/.cache/poc59/bench) and reused by every run.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from poc59.core.config import cache_root
from poc59.data.sources import discover_pairs
from poc59.data.synthetic import ensure_synthetic

SEED = 0
COPIES = 3  # each original has 3 stored `_augK` copies, as in the earlier system's export
AUGMENT = {"hflip": 0.5, "vflip": 0.3, "rot90": 0.3}  # the default flips/rot90 (conf/data/artefact.yaml)


@dataclass(frozen=True)
class Sizes:
    pairs: int  # image/mask pairs in the generated set
    image_size: int
    batch_size: int
    repeats: int  # interleaved (poc59, baseline) rounds of each timed comparison


@dataclass(frozen=True)
class ScanSizes:
    """One generated scan's size and how many interleaved rounds time it (the scan benchmarks)."""

    height: int
    width: int
    repeats: int


FULL = Sizes(pairs=1458, image_size=384, batch_size=96, repeats=3)  # the earlier system's 1,458 images
# Proves the harness runs (no bars): 8 originals with their copies, at a size where a pass takes a fraction of a
# second; the data benchmarks and train_step share this set.
QUICK = Sizes(pairs=32, image_size=128, batch_size=8, repeats=1)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def bench_dir() -> Path:
    path = cache_root() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir(prefix: str) -> Path:
    """A fresh folder for one run's throw-away cache, on the same disk as the data; the caller removes it."""
    parent = bench_dir() / "tmp"
    parent.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def data_set(pairs: int) -> Path:
    """A folder holding the first `pairs` pairs (by id) of the built-in synthetic set, generated once.

    ceil(pairs / 4) originals are generated, each with 3 `_augK` copies (sources of about 300-800 px);
    the folder links the first `pairs` of them (hard links: same files, same modification times).
    """
    n = math.ceil(pairs / (1 + COPIES))
    source = ensure_synthetic(bench_dir() / f"synthetic-n{n}-seed{SEED}", n, SEED, COPIES)
    out = bench_dir() / f"set-{pairs}"

    def fill(tmp: Path) -> None:
        for sample in discover_pairs(source)[0][:pairs]:
            for path, sub in ((sample.image, "images"), (sample.mask, "annotations")):
                try:
                    os.link(path, tmp / sub / path.name)
                except OSError:
                    shutil.copy2(path, tmp / sub / path.name)
        shutil.copy2(source / "metadata.csv", tmp / "metadata.csv")

    return build_folder_once(out, fill, f"{pairs} pairs of {source.name}")


def build_folder_once(out: Path, fill: Callable[[Path], None], note: str) -> Path:
    """`out`, an ARTeFACT-layout folder made once: `fill` writes images/ and annotations/ into a temporary
    folder beside it, which is renamed into place with a `.complete` marker (a killed writer leaves no
    half folder; when two runs race, the first rename wins and the other's copy is dropped)."""
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        for sub in ("images", "annotations"):
            (tmp / sub).mkdir()
        fill(tmp)
        (tmp / ".complete").write_text(note + "\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another run made it first
            if not (out / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def warm_cache_dir() -> Path:
    """The preload cache the warm-start, memory and feed benchmarks share (filled on first use)."""
    return bench_dir() / "preload-cache"


class TrainerStub(SimpleNamespace):
    """What the DataModule reads from a Lightning Trainer: one CPU process, in training."""

    def __init__(self, training: bool = True) -> None:
        super().__init__(
            global_rank=0,
            world_size=1,
            training=training,
            current_epoch=0,
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
        )


def datamodule(root: Path, s: Sizes, cache_dir: Path, **kw):
    """The production DataModule with the default augmentation, attached to a trainer stub."""
    from poc59.data.datamodule import SegmentationDataModule

    dm = SegmentationDataModule(
        root, image_size=s.image_size, batch_size=s.batch_size, cache_dir=cache_dir, augment=AUGMENT, **kw
    )
    dm.trainer = TrainerStub()
    return dm


# -- timing --------------------------------------------------------------------------------------


def interleaved(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each candidate `repeats` times, alternating A B A B ...; each returns its own measurement."""
    out: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            out[name].append(float(fn()))
    return out


class Stopwatch:
    """Wall time and this process's CPU time (all its threads) over a block: CPU / wall is the cores it got."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def clock() -> float:
    return time.perf_counter()


def can_drop_page_cache() -> bool:
    """Root may drop the page cache, unless POC59_BENCH_DROP_CACHES=0 (run.py --no-drop-caches)."""
    return os.environ.get("POC59_BENCH_DROP_CACHES", "1") != "0" and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_page_cache() -> bool:
    """Write dirty pages out and drop the page cache (needs root); False if not allowed."""
    if not can_drop_page_cache():
        return False
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def touch(*tensors: torch.Tensor) -> None:
    """Read one byte of every page, so lazily mapped memory is resident."""
    for t in tensors:
        flat = t.reshape(-1).numpy()
        int(flat[::4096].sum())


def load() -> dict:
    """The machine's load when a benchmark ran (it shares 2 cores with other work: absolute figures drift)."""
    one, five, _ = os.getloadavg()
    return {"loadavg_1min": round(one, 2), "loadavg_5min": round(five, 2), "cpus": os.cpu_count()}


# -- rows ----------------------------------------------------------------------------------------


REPORTED = "none (reported)"


def row(
    name: str,
    title: str,
    value: float,
    unit: str,
    baseline: float,
    baseline_what: str,
    ratio: float,
    ratio_what: str,
    bar: str,
    passed: bool | None,
    quick: bool,
    details: dict,
) -> dict:
    """One result row; in --quick mode the bars are not judged (passed is None). A figure reported
    without a bar passes `bar=REPORTED, passed=None`."""
    return {
        "name": name,
        "title": title,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_what": baseline_what,
        "ratio": ratio,
        "ratio_what": ratio_what,
        "bar": bar,
        "passed": None if quick or passed is None else bool(passed),
        "details": details,
    }

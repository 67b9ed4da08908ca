"""Run poc59's benchmarks on the production code paths and print one Markdown table.

    python bench/run.py [--quick] [--only NAME ...] [--strict] [--output PATH] [--no-drop-caches] [--priority]

Each benchmark is a module in bench/ (listed in BENCHMARKS below) with `run(quick: bool) -> list[dict]`
returning rows made by `common.row`. Every figure is compared with a baseline measured in the same
run, interleaved with it (A B A B ...), medians quoted: this machine's 2 cores are shared, so absolute
times drift and the ratio is what a bar judges. Full mode is where the bars apply; --quick (small
sizes) only proves the harness runs. A benchmark that raises becomes an error row, not a crash.
Results go to bench/results.json. Exit code 0 unless --strict and a bar failed or a benchmark errored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import common  # noqa: E402  (after the repository is on sys.path)

# The benchmarks, in the order they run: add a module name here to add a benchmark.
BENCHMARKS = [
    "cold_preload",  # issue 3: decode + resize + cache write vs PIL one by one
    "warm_start",  # issue 3: DataModule setup on a warm cache to the first batch vs a cold start
    "preload_memory",  # issue 3: peak RSS added vs the raw uint8 bytes
    "feed",  # issue 3: augmented batches/s vs the earlier per-sample DataLoader
    "train_step",  # issue 7: Lightning Trainer.fit images/s vs a plain PyTorch loop
    "predict",  # issue 6: predict MP/s vs a naive one-tile loop; peak memory of a 6,000 x 4,000 scan
    "quickstart",  # issue 29: the quickstart from empty caches, seeds 0-2 x threads 1, 2: each < 4 min, >= 2.2x all-Clean
    "ensemble",  # issue 15: a 3-fold ensemble's test mIoU against its best fold's (reported, no bar)
    "threads",  # issue 18: training images/s at threads=1 and 2, quiet and with another job running
    "sampling",  # issue 16: class-aware crop windows against uniform ones: val mIoU, rare classes, cracks
    "cli_start",  # issue 30: every command's --help, misspelt key and bad value vs python -c pass: < 1 s each
    "pyramid",  # issue 31 item 4: both pyramid TIFFs of a 300 MP scan vs the label PNG; their traced peak memory
    "tiff_masters",  # issue 31: 20,000 x 15,000 16-bit LZW TIFF: read speed vs the same pixels as an uncompressed PNG (>= 0.8x), the reader's peak, predict's peak (<= 1.5 GB)
    "iiif_source",  # issue 31 item 2: a 24 MP scan's pixels from an Image API 3 service on 127.0.0.1 vs the same PNG on disk
    "serve_latency",  # issue 32 item 2: one 2,048 x 1,536 scan: ONNX Runtime fp32 vs eager (>= 1.3x), int8 vs fp32 (>= 1.8x), FLOPs / peak
]


def raise_priority(nice: int = -20) -> None:
    """Niceness `nice` for this process and its children; with autogroup scheduling (a desktop-style kernel
    default) also for its session's group, since niceness alone then only weighs threads within a session."""
    try:
        os.nice(nice - os.nice(0))
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():
            autogroup.write_text(f"{nice}\n")
    except OSError as err:
        print(f"[bench] --priority partly ignored: {err}")


def load(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes: on a shared machine it
    moves far less with the load than wall time does, so it tells what a benchmark itself costs."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_benchmarks(modules: list[tuple[str, ModuleType]], quick: bool, log=print) -> list[dict]:
    """Run each module's `run(quick)`; a failure becomes one error row, and the others still run."""
    rows: list[dict] = []
    for name, module in modules:
        log(f"[bench] {name} ({'quick' if quick else 'full'}) ...")
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            produced = module.run(quick)
            if not produced:
                raise RuntimeError("the benchmark returned no rows")
        except Exception as err:  # noqa: BLE001  (any failure is reported, not raised)
            produced = [
                {
                    "name": name,
                    "title": getattr(module, "__doc__", None) and module.__doc__.strip().splitlines()[0] or name,
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=8),
                    "passed": False,
                }
            ]
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        for row in produced:
            row.setdefault("seconds", round(seconds, 1))
            row.setdefault("cpu_seconds", round(cpu, 1))
        log(f"[bench] {name}: {seconds:.1f} s (CPU {cpu:.1f} s)")
        rows.extend(produced)
    return rows


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value < 1 else f"{value:.1f} s"
    if unit == "img/s":
        return f"{value:,.0f} img/s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.3g} {unit}"


def table(rows: list[dict]) -> str:
    lines = [
        "| benchmark | poc59 | baseline | ratio | bar | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error | | | | ERROR: {r['error'][:160].replace('|', '/')} |")
            continue
        result = (
            "reported"
            if r["bar"] == common.REPORTED
            else "n/a (quick)"
            if r["passed"] is None
            else ("pass" if r["passed"] else "FAIL")
        )
        ratio = f"{r['ratio']:.2f}x" + (" raw" if r["ratio_what"] == "x raw" else "")
        lines.append(
            f"| **{r['name']}**: {r['title']} | {_fmt(r['value'], r['unit'])} | {_fmt(r['baseline'], r['unit'])} "
            f"({r['baseline_what']}) | {ratio} | {r['bar']} | {result} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves it runs (bars not judged)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help=f"one of {BENCHMARKS} (repeatable)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a bar fails or a benchmark errors")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--no-drop-caches",
        action="store_true",
        help="never drop the page cache (by default cold runs drop it first when run as root)",
    )
    parser.add_argument(
        "--priority",
        action="store_true",
        help="run at niceness -20, also for the session's autogroup (root only): other work on the machine then "
        "takes less of the cores measured (a parallel-vs-serial ratio is otherwise decided by how busy the "
        "machine is); that work slows down meanwhile",
    )
    args = parser.parse_args(argv)
    if args.priority:
        raise_priority()
    if args.no_drop_caches:
        os.environ["POC59_BENCH_DROP_CACHES"] = "0"
    names = [n for spec in args.only for n in spec.split(",") if n] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}")

    import torch

    started = dt.datetime.now(dt.timezone.utc)
    rows = run_benchmarks([(n, load(n)) for n in names], args.quick)
    report = {
        "mode": "quick" if args.quick else "full",
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "niceness": os.nice(0),
            "autogroup": Path("/proc/self/autogroup").read_text().strip()
            if Path("/proc/self/autogroup").exists()
            else None,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(table(rows))
    loadavg = report["machine"]["loadavg_at_end"]
    print(
        f"\n{report['mode']} mode, {report['seconds']:.0f} s, niceness {report['machine']['niceness']}, "
        f"load average {loadavg[0]} (1 min) on {report['machine']['cpus']} cores; results in {args.output}"
    )
    failed = [r["name"] for r in rows if r["passed"] is False]
    if failed:
        print(f"bars missed or errors: {', '.join(failed)}")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 30 item 4: every command answers `--help`, a misspelt key and a bad value at once.

Each call is the real command in a fresh process (`python -m poc59.<command> ...`, as a user types it),
timed from launch to exit, in a scratch folder; its exit status is checked (0 for --help, 2 for the
others), so a call answered by a traceback is an error row, not a fast figure. The baseline is the
interpreter's own start, `python -c pass`, timed in the same run and interleaved with the calls (pass,
then every command's call, pass, ...), so a change in the machine's load falls on both. One row per kind of
call: the median over all commands of each command's median time, against the median `python -c pass`;
the bar is under 1 s. Every command's median is in the row's details, and the slowest is named in it,
with each command's median CPU time (user + system, its process's own): on this shared machine the wall
time moves with the other work, the CPU time much less.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from bench import common

NAME = "cli_start"
BAR_S = 1.0
# Per command: (a misspelt key, a value of the wrong type for a typed key); --help is the third call.
CALLS: dict[str, tuple[list[str], list[str]]] = {
    "train": (["data.image_sise=64"], ["trainer.max_epochs=many"]),
    "prepare": (["data.image_sise=64"], ["data.image_size=big"]),
    "evaluate": (["run_dri=outputs/runs/x"], ["run_dir=outputs/runs/x", "bootstrap.resamples=many"]),
    "predict": (["ckpt=a.ckpt", "input=scans", "output=maps", "tt=true"], ["ckpt=a.ckpt", "tta=maybe"]),
    "compare": (["swep=outputs/sweeps/x"], ["sweep=outputs/sweeps/x", "evaluate=maybe"]),
    "export": (["run_dri=outputs/runs/x"], ["run_dir=outputs/runs/x", "opset=new"]),
    "weights": (["fetch", "encodr=tiny"], ["fetch", "encoder=tiny", "force=maybe"]),
    "sweep_status": (["swep=outputs/sweeps"], ["sweep=outputs/sweeps", "json=maybe"]),
    "import_parquet": (["src=shards", "out=data", "max_sid=512"], ["src=shards", "out=data", "max_side=big"]),
    "serve": (["modle=model.onnx"], ["model=model.onnx", "port=abc"]),
    "annotate": (["push", "urll=http://localhost:8080"], ["pull", "overwrite=maybe"]),
}
QUICK_COMMANDS = ("train", "evaluate", "weights")  # --quick: one of each kind of parser (config, keys, verbs)
KINDS = {"help": "--help", "misspelt_key": "a misspelt key", "bad_value": "a bad value"}


def calls(command: str) -> dict[str, tuple[list[str], int]]:
    """{kind: (the arguments, the exit status they must give)} of one command."""
    misspelt, bad = CALLS[command]
    return {"help": (["--help"], 0), "misspelt_key": (misspelt, 2), "bad_value": (bad, 2)}


def _cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(args: list[str], expected: int, cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `python <args>`, which must exit with `expected`."""
    env = {**os.environ, "POC59_VERBOSE": ""}
    cpu, start = _cpu_of_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    took, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    if proc.returncode != expected:
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}, not {expected}:\n{proc.stderr[-2000:]}")
    return took, cpu


def run(quick: bool) -> list[dict]:
    repeats = 1 if quick else 3
    commands = list(QUICK_COMMANDS if quick else CALLS)
    scratch = common.scratch_dir("cli-start-")
    times: dict[str, dict[str, list[tuple[float, float]]]] = {kind: {c: [] for c in commands} for kind in KINDS}
    baseline: list[tuple[float, float]] = []
    before = common.load()
    try:
        for _ in range(repeats):
            for command in commands:
                baseline.append(_timed(["-c", "pass"], 0, str(scratch)))
                for kind, (args, expected) in calls(command).items():
                    times[kind][command].append(_timed(["-m", f"poc59.{command}", *args], expected, str(scratch)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    python = statistics.median(wall for wall, _ in baseline)
    rows = []
    for kind, what in KINDS.items():
        per_command = {c: statistics.median(wall for wall, _ in t) for c, t in times[kind].items()}
        cpu_per_command = {c: statistics.median(cpu for _, cpu in t) for c, t in times[kind].items()}
        value = statistics.median(per_command.values())
        slowest = max(per_command, key=per_command.get)
        rows.append(
            common.row(
                f"{NAME}_{kind}",
                f"`python -m poc59.<command>` answering {what}, launch to exit: median over "
                f"{len(commands)} commands (slowest: {slowest}, {per_command[slowest]:.2f} s)",
                value,
                "s",
                python,
                "python -c pass (the interpreter's start)",
                value / python,
                "x python -c pass",
                f"< {BAR_S:g} s",
                value < BAR_S,
                quick,
                {
                    "seconds_per_command": per_command,
                    "cpu_seconds_per_command": cpu_per_command,
                    "slowest": slowest,
                    "python_c_pass_s": [wall for wall, _ in baseline],
                    "python_c_pass_cpu_s": [cpu for _, cpu in baseline],
                    "calls": {c: calls(c)[kind][0] for c in commands},
                    "load_before": before,
                    "load_after": common.load(),
                },
            )
        )
    return rows

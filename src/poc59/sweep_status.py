"""Which runs of a sweep finished, failed, or still run: `python -m poc59.sweep_status sweep=DIR [json=true]`.

A sweep folder is what `python -m poc59.train -m ...` writes (conf/train.yaml `hydra.sweep`):

    SWEEP_DIR/multirun.yaml                 the sweep's config and overrides (the job list)
    SWEEP_DIR/<num>/.hydra/overrides.yaml   one folder per run, once it has started
    SWEEP_DIR/<num>/summary.json            once it has finished
    SWEEP_DIR/.submitit/<job id>/           submitit's logs and result pickles (submitit launchers)

Reads only files; asks `squeue` (when there is one) to tell pending from running SLURM jobs and
to notice jobs that ended without a result. A run is

- finished: summary.json is there (encoder, best val/mIoU, epochs);
- failed: the job raised (submitit's result pickle, or an ERROR in the run's train.log), or SLURM
  ended it without a result (killed, out of memory, time limit): the error's last lines;
- running: it has started (a run folder or logs) and nothing says it ended;
- pending: nothing of it has started yet.

SWEEP_DIR may also be a folder of sweeps (e.g. outputs/sweeps): the newest one is shown.
Exit status 0 (also with failed runs; read json=true), 2 if the folder holds no sweep.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from poc59.core.cli import Command, Key, run_command
from poc59.core.logs import print_titled, results_console


def _print_table(report: dict) -> None:
    from poc59.training.sweeps import STATES

    console = results_console()
    counts = report["counts"]
    title = f"Sweep {report['sweep_dir']}: " + ", ".join(f"{counts[s]} {s}" for s in STATES)
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("status")
    table.add_column("overrides", overflow="fold")
    table.add_column("encoder", overflow="fold")
    table.add_column("val/mIoU", justify="right", no_wrap=True)
    table.add_column("epochs", justify="right")
    table.add_column("job", overflow="fold")
    style = {"finished": "green", "failed": "bold red", "running": "yellow", "pending": "dim"}
    for j in report["jobs"]:
        miou = "" if j["val/mIoU"] is None else f"{100 * j['val/mIoU']:.2f} %"
        epochs = "" if j["epochs_run"] is None else str(j["epochs_run"])
        if j["best_epoch"] is not None:
            epochs += f" (best {j['best_epoch']})"
        encoder = " + ".join(x for x in (j["encoder"], j["decoder"]) if x)
        where = " ".join(x for x in (j["job_id"], j["slurm_state"] and j["slurm_state"].lower()) if x)
        table.add_row(
            str(j["num"]),
            Text(j["status"], style=style[j["status"]]),
            "\n".join(j["overrides"]),
            encoder,
            miou,
            epochs,
            where,
        )
    print_titled(console, table)
    for j in report["jobs"]:  # errors below the table, where their lines keep their width
        if j["status"] == "failed":
            where = f" ({j['log']})" if j["log"] else ""
            console.print(Text(f"#{j['num']} failed: {j['cause']}{where}", style="bold red"), soft_wrap=True)
            for line in j["error"]:
                console.print(Text("    " + line), soft_wrap=True)
    running = [j for j in report["jobs"] if j["status"] == "running" and j["log"]]
    for j in running:
        console.print(Text(f"#{j['num']} running: follow {j['log']}", style="yellow"))


CLI = Command(
    prog="python -m poc59.sweep_status",
    summary="Which runs of a sweep finished, failed (with the error's last lines), or still run.",
    examples=(
        "python -m poc59.sweep_status sweep=outputs/sweeps/<date_time>",
        "python -m poc59.sweep_status sweep=outputs/sweeps json=true   # the newest sweep, as JSON on stdout",
    ),
    keys=(
        Key(
            "sweep",
            str,
            "a sweep folder (outputs/sweeps/<date_time>), or a folder of sweeps (the newest)",
            required=True,
        ),
        Key("json", bool, "print the report as JSON on stdout instead of a table", default=False),
        Key("lines", int, "last lines of each error to show"),
        Key("squeue", bool, "ask squeue (when there is one) to tell pending from running SLURM jobs", default=True),
    ),
    notes="Exit 0 (also with failed runs: read json=true), 2 if the folder holds no sweep.",
    fills="poc59.training.sweeps:sweep_status",
)


def _status(options: dict[str, Any]) -> int:
    from poc59.training.sweeps import sweep_status

    report = sweep_status(options["sweep"], lines=options.get("lines", 5), use_squeue=options.get("squeue", True))
    if options.get("json"):
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print_table(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _status, (FileNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())

"""One logging setup for every command: log lines on stderr in one format, results on stdout.

Every command logs `2026-12-03 19:07:34 INFO poc59.train: message` on stderr, so a SLURM job's log, a
pipe and a terminal read the same; Python warnings come through the same lines (`py.warnings`). On a
terminal the lines go through the Rich console that draws the progress bars (`log_console`), so a bar
never tears a line. Results (tables, the paths a script reads) go to stdout through `results_console`,
which is wide when stdout is a file: a table is never wrapped into `par / ame / ter / s`.

Quiet by default about what the user cannot act on (`QUIET`, each entry with its reason, and the
deprecation warnings of dependencies); `-v` on any command (or `hydra.verbose=true` for train, which
also turns on DEBUG) keeps everything. `-v` also sets POC59_VERBOSE=1, so a sweep's jobs are verbose too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import rich
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.\[\]-]+: ")  # one line
# An ERROR line of a run's log: this format, or Hydra's default (`[time][name][ERROR] - `) of older runs' train.log
ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (ERROR|CRITICAL) |\]\[(ERROR|CRITICAL)\] - ")
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_ENV = "POC59_VERBOSE"
WIDE = 400  # columns of the results console when stdout is a file or a pipe


@dataclass(frozen=True)
class Quiet:
    """A message left out unless verbose: from a logger under `logger`, starting with `pattern` (a regex)."""

    logger: str
    pattern: str
    why: str


QUIET = (
    Quiet("lightning", r"💡 Tip", "advertising"),
    Quiet("lightning", r"(GPU|TPU|HPU|IPU) available", "the device banner: poc59 logs the device it trains on"),
    Quiet("lightning", r"`Trainer\(limit_\w+_batches=1\.0\)` was configured", "poc59's own defaults, not a choice"),
    Quiet("lightning", r"Loading `train_dataloader` to estimate", "an internal step of the scheduler's set-up"),
    Quiet("lightning", r"Seed set to", "the seed is in the run's config.yaml and summary.json"),
    Quiet("lightning", r"`Trainer\.fit` stopped: `max_epochs=", "the epoch lines say the run ended"),
    Quiet("py.warnings", r".*The `srun` command is available", "poc59 submits SLURM jobs itself (hydra/launcher)"),
)


class QuietFilter(logging.Filter):
    """Drops the records of `QUIET` (see the module docstring)."""

    def __init__(self, quiet: Sequence[Quiet] = QUIET) -> None:
        super().__init__()
        self.quiet = [(q.logger, re.compile(q.pattern)) for q in quiet]

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        hits = [p for logger, p in self.quiet if name == logger or name.startswith(logger + ".")]
        return not hits or not any(p.match(record.getMessage()) for p in hits)


class LineFormatter(logging.Formatter):
    """FORMAT, without the newline a Python warning's text ends with (no blank line after it)."""

    def __init__(self) -> None:
        super().__init__(FORMAT, DATEFMT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


class ConsoleHandler(logging.Handler):
    """Log lines printed through a Rich console: above its live progress bars, never torn by them."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def log_console() -> Console:
    """The stderr console that log lines and progress bars share: Rich's global console, put on stderr
    (Lightning's training bar draws on that one too, poc59's ProgressBar asking for stderr)."""
    if not rich.get_console().stderr:
        rich.reconfigure(stderr=True)
    return rich.get_console()


def results_console() -> Console:
    """The stdout console for results: a terminal's width on a terminal, else WIDE columns (no wrapped tables)."""
    return Console() if sys.stdout.isatty() else Console(width=WIDE)


def print_titled(console: Console, table: Table) -> None:
    """`table` under its title printed as its own line: Rich wraps a title to the table's width, so a long
    one (a sweep's path) breaks mid-phrase in a file however wide the console is."""
    title, table.title = table.title, None
    if title:
        console.print(Text(str(title), style="italic"), soft_wrap=True, highlight=False)
    console.print(table)


def take_verbose(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv without -v/--verbose, whether verbose: a flag given, or POC59_VERBOSE=1 inherited)."""
    rest = [a for a in argv if a not in VERBOSE_FLAGS]
    if len(rest) < len(argv):
        os.environ[VERBOSE_ENV] = "1"
    return rest, os.environ.get(VERBOSE_ENV, "") not in ("", "0")


_OURS = "_poc59_handler"


def setup_logging(verbose: bool = False, handlers: Sequence[logging.Handler] | None = None) -> None:
    """INFO and up in FORMAT on stderr, quiet unless `verbose` (module docstring).

    `handlers`: handlers set up already (Hydra's console and train.log) to format and filter instead of a
    new stderr one. Lightning's own handlers go (it adds one when imported before this runs, in no format):
    its records reach the root's handlers like every other library's."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    if handlers is None:
        handler = ConsoleHandler(log_console()) if log_console().is_terminal else logging.StreamHandler(sys.stderr)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
        handlers = [handler]
    else:  # Hydra's: its console handler, on a terminal, goes through the console the bars are drawn on
        handlers = [_through_console(root, h) for h in handlers]
    for handler in handlers:
        handler.setFormatter(LineFormatter())
        for f in [f for f in handler.filters if isinstance(f, QuietFilter)]:
            handler.removeFilter(f)
        if not verbose:
            handler.addFilter(QuietFilter())
    root.setLevel(min(root.level or logging.INFO, logging.INFO))  # INFO; DEBUG only if asked (hydra.verbose)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        lib = logging.getLogger(name)
        for h in [h for h in lib.handlers if type(h) is logging.StreamHandler]:
            lib.removeHandler(h)
        lib.propagate = True
    for noisy in ("matplotlib", "PIL", "urllib3", "fsspec", "filelock", "git", "alembic", "h5py", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    if not verbose:
        quiet_dependency_warnings()


def _through_console(root: logging.Logger, handler: logging.Handler) -> logging.Handler:
    """`handler`, or a ConsoleHandler in its place when it writes to a terminal's stderr."""
    stream = getattr(handler, "stream", None)
    if type(handler) is not logging.StreamHandler or stream is not sys.__stderr__ or not log_console().is_terminal:
        return handler
    console = ConsoleHandler(log_console())
    console.setLevel(handler.level)
    root.removeHandler(handler)
    root.addHandler(console)
    return console


def quiet_dependency_warnings() -> None:
    """Deprecation and future warnings of dependencies left out; poc59's own still show."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"poc59(\.|$)")

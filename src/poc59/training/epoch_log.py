"""One plain log line per epoch, whatever the terminal: what a SLURM job's log shows while it trains.

    Epoch 3 (4 of 20): train loss 0.512, val loss 0.498, val mIoU 8.04 % (best 8.04 % at epoch 3),
    10.6 images/s, elapsed 0:01:02, about 0:04:08 left

"val mIoU" is the metric the setting `monitor` names (val/<name> of `poc59.metrics`; the best is by it).
Epochs are numbered from 0, as summary.json and the end-of-run lines number them. images/s is this
epoch's training throughput (TrainThroughput's convention: after its first step, validation excluded);
the time left is this attempt's mean time per epoch times the epochs still to run. Rank 0 only.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

from poc59.core.progress import clock
from poc59.metrics import registry
from poc59.training.throughput import TrainThroughput

log = logging.getLogger("poc59.train")


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f} %"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


class EpochLog(L.Callback):
    """Logs the epoch line of the module docstring at the end of every training epoch."""

    def __init__(self, monitor: str | None = None) -> None:
        """`monitor`: the validation metric shown and whose best is named (default the registry's headline)."""
        self.monitor = registry.check_monitor(monitor)
        self._start = time.perf_counter()
        self._first = 0
        self.rows: list[dict] = []  # per epoch: losses, val mIoU, learning rate (training_curves.png); resumed

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch, total = trainer.current_epoch, trainer.max_epochs
        metrics = trainer.callback_metrics
        name, head = self.monitor.removeprefix("val/"), registry.headline().name
        history = getattr(pl_module, "history", [])
        now = next((h for h in history if h["epoch"] == epoch and h.get(name) is not None), None)
        best = registry.best_entry(history, self.monitor)
        throughput = next((c for c in trainer.callbacks if isinstance(c, TrainThroughput)), None)
        last = throughput.epochs[-1] if throughput and throughput.epochs else None
        ips = last["images"] / last["seconds"] if last and last["images"] and last["seconds"] > 0 else None
        elapsed = time.perf_counter() - self._start
        done = epoch - self._first + 1
        left = elapsed / done * (total - epoch - 1) if total and total > 0 and done > 0 else None
        train_loss, val_loss = metrics.get("train/loss_epoch"), metrics.get("val/loss") if now else None
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [
            {
                "epoch": epoch,
                "train_loss": None if train_loss is None else float(train_loss),
                "val_loss": None if val_loss is None else float(val_loss),
                "val_miou": now.get(head) if now else None,  # the curve of the headline (mIoU)
                "lr": float(lrs[0]) if lrs else None,
            }
        ]
        log.info(
            "Epoch %d (%d of %s): train loss %s, val loss %s, val %s %s (best %s%s), %s images/s, elapsed %s%s",
            epoch,
            epoch + 1,
            total if total and total > 0 else "?",
            _num(train_loss),
            _num(val_loss),
            name,
            _pct(now[name]) if now else "n/a (no validation this epoch)",
            _pct(best[name]) if best else "n/a",
            f" at epoch {best['epoch']}" if best else "",
            f"{ips:.1f}" if ips else "n/a",
            clock(elapsed),
            f", about {clock(left)} left" if left is not None else "",
        )

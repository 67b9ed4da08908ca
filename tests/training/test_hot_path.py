"""The training step reads nothing back from the device (on a GPU each read is a host sync that stalls the step).

Counted on a CPU by following device values through every tensor operation (tests/host_syncs.py), on the
real composed config with its callbacks, the Rich progress bar included.
"""

from __future__ import annotations

import sys

import pytest

import host_syncs
from helpers import make_cfg
from poc59.metrics import confusion
from poc59.training.run import train


@pytest.mark.slow  # a training with every tensor operation followed: 28 s at a load of 8-10
def test_training_steps_read_nothing_from_the_device_but_the_bar_at_its_refresh(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar is shown (not in a file)
    # count the confusion matrix as a GPU does (a CPU's bincount reads the max; a GPU's scatter does not)
    real = confusion.histogram  # where the registry's confusion matrix looks it up
    monkeypatch.setattr(confusion, "histogram", lambda v, bins: real(v, bins, scatter=True))
    host_syncs.WATCHES.clear()
    cfg = make_cfg(
        tmp_path,
        "encoder=tiny",
        "data.synthetic.n=12",
        "data.image_size=64",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=7",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=3",
        "+callbacks.host_syncs._target_=host_syncs.HostSyncWatch",
    )
    train(cfg)
    (watch,) = host_syncs.WATCHES
    assert watch.batches == 7
    outside_bar = [r for r in watch.reads if "progress.py" not in r[2]]
    assert outside_bar == []  # the module's step, the loss, the metric update, backward, optimizer, other callbacks
    # the bar reads the step loss on an epoch's first batch, then every log_every_n_steps batches
    assert watch.reads and {b for b, _, _ in watch.reads} <= {0, 2, 5}

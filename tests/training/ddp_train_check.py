"""Run by tests/training/test_ddp.py in a subprocess: poc59.training.run.train on the real composed config, under DDP (gloo),
with a guard on torch.distributed's collectives (Lightning re-executes this script for every rank).

usage: python ddp_train_check.py OUT_DIR OVERRIDE...

NCCL, the backend of every multi-GPU run, refuses collectives on CPU tensors; gloo, the backend of these
tests, accepts them. So once `fit` has returned, the guard fails any collective on a CPU tensor as NCCL
would, and every rank writes OUT_DIR/after-fit-<rank>.json: the collectives it ran after `fit` (there
should be none: a rank-0-only step after fit that syncs would hang the others), and the pixels each
validation epoch's confusion matrix counted.
"""

import functools
import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.utils._pytree import tree_flatten

from poc59.core.config import config_dir, register_resolvers
from poc59.model.module import SegmentationModule
from poc59.training.run import train

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
)
after_fit: list[dict] = []
fit_returned = False


def guarded(name, collective):
    @functools.wraps(collective)
    def call(*args, **kwargs):
        if fit_returned:
            cpu = [
                tuple(t.shape)
                for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor) and t.device.type == "cpu"
            ]
            after_fit.append({"collective": name, "cpu_tensors": cpu})
            if cpu:
                raise RuntimeError(
                    f"{name} on CPU tensors {cpu} after fit: NCCL refuses this ('No backend type associated with device type cpu')"
                )
        return collective(*args, **kwargs)

    return call


for module in (dist, dist.distributed_c10d):
    for name in COLLECTIVES:
        if hasattr(module, name):
            setattr(module, name, guarded(name, getattr(dist.distributed_c10d, name)))

fit = L.Trainer.fit


def fit_then_guard(self, *args, **kwargs):
    global fit_returned
    try:
        return fit(self, *args, **kwargs)
    finally:
        fit_returned = True


L.Trainer.fit = fit_then_guard
val_pixels: list[int] = []  # pixels counted by each validation epoch's confusion matrix (summed over ranks)
epoch_end = SegmentationModule.on_validation_epoch_end


def count_pixels(self):
    epoch_end(self)
    if not self.trainer.sanity_checking:
        val_pixels.append(int(self.val_confmat.sum()))


SegmentationModule.on_validation_epoch_end = count_pixels

out, overrides = Path(sys.argv[1]), sys.argv[2:]
register_resolvers()
with initialize_config_dir(str(config_dir()), version_base="1.3"):
    cfg = compose("train", overrides=overrides)
with open_dict(cfg):
    cfg.paths.run_dir = str(out / "run")
summary = train(cfg)
rank = dist.get_rank() if dist.is_initialized() else 0
(out / f"after-fit-{rank}.json").write_text(
    json.dumps({"after_fit": after_fit, "world_size": summary["provenance"]["devices"], "val_pixels": val_pixels})
)

"""Host reads of device values on the training hot path, counted on a CPU.

On a GPU, `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `nonzero()`, `unique()`, `bincount()`, boolean-mask
indexing and `bool(tensor)` of a value computed on the device each stall the step until the GPU catches up.
On a CPU nothing stalls, so this counts them instead: `HostSyncWatch` is a callback that, from each training
batch's start to its end (forward, loss, metrics, backward, clipping, optimizer, every callback's batch
hooks), taints the batch, the module's parameters, buffers and metric states, and their gradients, follows
the taint through every tensor operation, and records each host read of a tainted value with the code that
made it. Values made on the host (the augmentation's CPU generator draws, the optimizer's step counters)
are not tainted, as on a GPU they cost no sync.

Not counted: `.to(device)`, which on a CPU cannot tell a copy to the host from a no-op (`.cpu()` is counted).

Use it through the real config: `+callbacks.host_syncs._target_=host_syncs.HostSyncWatch`.
"""

from __future__ import annotations

import traceback
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary
from torchmetrics import Metric

T = torch.Tensor
READS = {
    T.item,
    T.tolist,
    T.cpu,
    T.numpy,
    T.nonzero,
    torch.nonzero,
    T.unique,
    torch.unique,
    T.bincount,
    torch.bincount,
    T.masked_select,
    torch.masked_select,
    T.__bool__,
    T.__int__,
    T.__float__,
    T.__index__,
    T.any,
    T.all,
}
WATCHES: list[HostSyncWatch] = []  # the instances Hydra made, for the test to read


class _Taint(TorchFunctionMode):
    def __init__(self, watch: HostSyncWatch) -> None:
        super().__init__()
        self.watch, self.tainted = watch, WeakIdKeyDictionary()

    def taint(self, *objs: Any) -> None:
        for t in tree_flatten(objs)[0]:
            if isinstance(t, torch.Tensor):
                self.tainted[t] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        hot = any(isinstance(t, torch.Tensor) and t in self.tainted for t in flat)
        if hot and self._is_read(func, args, kwargs):
            self.watch.record(getattr(func, "__name__", str(func)))
        out = func(*args, **kwargs)
        if hot:
            self.taint(out)
        return out

    @staticmethod
    def _is_read(func, args, kwargs) -> bool:
        if func in (T.any, T.all, torch.any, torch.all):  # a device tensor unless converted: only bool() reads it
            return False
        if func in READS:
            return True
        if func in (T.__getitem__, T.__setitem__, T.index_put_):  # boolean-mask indexing: a nonzero() inside
            index = args[1] if len(args) > 1 else None
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(index)[0])
        return False


class HostSyncWatch(L.Callback):
    """Records `(training batch, read, where)` for every host read of a device value (see the module doc)."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, str, str]] = []
        self.batches = 0
        self._mode: _Taint | None = None
        WATCHES.append(self)

    def record(self, what: str) -> None:
        stack = [f"{f.filename.rsplit('/', 3)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-3]]
        here = [s for s in stack if "host_syncs.py" not in s and "overrides.py" not in s]
        self.reads.append((self.batches, what, " < ".join(reversed(here[-10:]))))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._mode = _Taint(self)
        self._mode.taint(batch, list(pl_module.parameters()), list(pl_module.buffers()))
        for m in pl_module.modules():
            if isinstance(m, Metric):
                self._mode.taint([getattr(m, name) for name in m._defaults])
        self._mode.__enter__()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self._mode is not None:
            self._mode.taint([p.grad for p in pl_module.parameters() if p.grad is not None])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        self.batches += 1

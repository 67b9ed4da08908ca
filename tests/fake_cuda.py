"""A CPU stand-in for CUDA devices, for testing the GPU code paths on a machine without a GPU.

Inside `FakeCuda(devices=2)`, tensors "on" `cuda:N` live in CPU memory but report `device == cuda:N`; like real
CUDA, an operation refuses to mix tensors of two devices (0-dim CPU scalars, indexing with CPU indices and
`copy_` excepted, as torch allows them), and `.numpy()` of a device tensor fails. `torch.cuda`'s
`is_available`, `device_count`, `current_device`, `device`, `synchronize`, `current_stream`, `Event` and
memory statistics are replaced by recorders: `calls` lists what ran for which device, so a test can tell
that `cuda:1` work was synchronised on `cuda:1`, not on the default `cuda:0`.

It stands in for placement and synchronisation only: no kernels, streams or timing are emulated, and
tensors made by autograd (gradients) are not tagged. The real GPU check (bench/gpu_check.sh) covers the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

CPU = torch.device("cpu")
_MIXING_ALLOWED = {
    "copy_",
    "__getitem__",
    "__setitem__",
    "index_put_",
    "index_put",
    "_has_compatible_shallow_copy_type",
}


def _is_property(func: Any, prop: Any) -> bool:
    return getattr(func, "__self__", None) is prop


class FakeCuda(TorchFunctionMode):
    """See the module docstring. `calls`: (what, device) for every synchronising or stream call."""

    def __init__(self, devices: int = 2) -> None:
        super().__init__()
        self.devices = devices
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.calls: list[tuple[str, torch.device]] = []
        self.current = 0
        self._patches: contextlib.ExitStack | None = None

    # -- placement ---------------------------------------------------------------------------
    def device_of(self, t: torch.Tensor) -> torch.device:
        return self.tags.get(t, CPU)

    def put(self, t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """A copy of CPU tensor `t` 'on' `device` (as `t.to(device)` would give)."""
        out = t.detach().clone()
        self._tag(out, self._device(device))
        return out

    def _device(self, device: Any) -> torch.device:
        d = torch.device(device)
        if d.type == "cuda" and d.index is None:
            d = torch.device("cuda", self.current)
        if d.type == "cuda" and d.index >= self.devices:
            raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{d.index}; this stand-in has {self.devices})")
        return d

    def _tag(self, out: Any, device: torch.device) -> Any:
        def tag(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                if device.type == "cuda":
                    self.tags[x] = device
                else:
                    self.tags.pop(x, None)
            return x

        return tree_map(tag, out)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if _is_property(func, torch.Tensor.device):
            return self.device_of(args[0])
        if _is_property(func, torch.Tensor.is_cuda):
            return self.device_of(args[0]).type == "cuda"
        if _is_property(func, torch.Tensor.data) and name == "__set__":
            self._tag(args[0], self.device_of(args[1]))
            return func(*args, **kwargs)
        if func in (torch.Tensor.pin_memory,):
            return args[0]
        if func in (torch.Tensor.is_pinned,):
            return False
        if func in (torch.Tensor.numpy,) and self.device_of(args[0]).type == "cuda":
            raise TypeError(
                f"can't convert {self.device_of(args[0])} device type tensor to numpy. Use Tensor.cpu() first"
            )
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._to(func, args, kwargs)
        kwargs.pop("pin_memory", None)
        target = None
        if "device" in kwargs and kwargs["device"] is not None:  # a factory (torch.empty(..., device=...))
            target = self._device(kwargs["device"])
            kwargs["device"] = "cpu"
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        devices = {self.device_of(t) for t in tensors if not (t.ndim == 0 and self.device_of(t) == CPU)}
        if target is not None:
            devices.add(target)
        if len(devices) > 1 and name not in _MIXING_ALLOWED:
            found = sorted(map(str, devices))
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {found[0]} and {found[1]}! ({name})"
            )
        out = func(*args, **kwargs)
        device = target or next((d for d in devices if d.type == "cuda"), None)
        if name.endswith("_") and not name.endswith(
            "__"
        ):  # in place (copy_, add_, ...): the result is the first argument
            return out
        return self._tag(out, device) if device is not None else out

    def _to(self, func, args, kwargs):
        t = args[0]
        if func is torch.Tensor.cuda:
            device = self._device(args[1] if len(args) > 1 else kwargs.get("device", "cuda"))
            dtype = None
        elif func is torch.Tensor.cpu:
            device, dtype = CPU, None
        else:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                device, dtype = self.device_of(args[1]), args[1].dtype
            else:
                device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
                device = self._device(device) if device is not None else self.device_of(t)
        converted = t.to(dtype) if dtype is not None else t
        if device == self.device_of(t):
            return converted
        if converted is t:
            converted = t.clone()
        return self._tag(converted, device)

    # -- torch.cuda ----------------------------------------------------------------------------
    def __enter__(self) -> FakeCuda:
        fake = self

        class Stream:
            def __init__(self, device: torch.device) -> None:
                self.device = device

            def synchronize(self) -> None:
                fake.calls.append(("stream.synchronize", self.device))

        class Event:
            def __init__(self, *a: Any, **k: Any) -> None:
                self.device: torch.device | None = None

            def record(self, stream: Stream | None = None) -> None:
                self.device = stream.device if stream is not None else torch.device("cuda", fake.current)
                fake.calls.append(("event.record", self.device))

            def synchronize(self) -> None:
                fake.calls.append(("event.synchronize", self.device))

            def query(self) -> bool:
                return True

        @contextlib.contextmanager
        def device(index: Any) -> Iterator[None]:
            before = fake.current
            fake.current = fake._device(index).index if not isinstance(index, int) else index
            try:
                yield
            finally:
                fake.current = before

        def on(what: str):
            def record(device: Any = None, *a: Any, **k: Any) -> int:
                fake.calls.append((what, fake._device(device if device is not None else "cuda")))
                return 0

            return record

        self._patches = contextlib.ExitStack()
        for attr, value in {
            "is_available": lambda: True,
            "device_count": lambda: self.devices,
            "current_device": lambda: self.current,
            "device": device,
            "synchronize": on("synchronize"),
            "current_stream": lambda device=None: Stream(self._device(device if device is not None else "cuda")),
            "Event": Event,
            "max_memory_allocated": on("max_memory_allocated"),
            "reset_peak_memory_stats": on("reset_peak_memory_stats"),
            "empty_cache": lambda: None,
        }.items():
            self._patches.enter_context(_patched(torch.cuda, attr, value))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        assert self._patches is not None
        self._patches.close()

    def devices_called(self, *what: str) -> set[torch.device]:
        """The devices that the named calls (e.g. "synchronize", "event.record") ran for."""
        return {d for w, d in self.calls if w in what}


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    before = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, before)

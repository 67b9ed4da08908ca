"""Devices and precision, defined once for every command (training config, evaluate, predict, bench).

- `resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`: auto is the first CUDA GPU if there is one;
  a GPU that is not there is a `DeviceError` naming the setting to use.
- `auto_precision()`: Lightning's precision by device: bf16-mixed on GPUs with native bf16 (compute
  capability 8.0 and newer), 16-mixed on older GPUs (V100, T4: PyTorch reports bf16 there as supported
  by emulation, slower than fp16), 32-true on CPU (bf16 autocast is about 30x slower than fp32 on CPU).
- `autocast_dtype(precision, device)`: the autocast dtype of any precision name poc59 accepts
  (auto, 32, bf16, fp16, 16, or Lightning's bf16-mixed, 16-mixed, 32-true); None = float32. Mixed
  precision runs on CUDA only.
- `autocast(device, dtype)`: that autocast as a context (nothing on CPU or for float32).
- `synchronize(device)`: wait for `device`'s work (timing), not the default GPU's.
- `peak_memory(device)`: peak memory with its meaning.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from typing import Any

import torch

log = logging.getLogger(__name__)

_NAMES = {
    "auto": "auto",
    "32": "32",
    "32-true": "32",
    "fp32": "32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "fp16": "fp16",
    "16": "fp16",
    "16-mixed": "fp16",
}
_DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device that is not there; the message names the setting to use."""


def resolve_device(device: str = "auto") -> torch.device:
    """device=auto|cpu|cuda[:N] (auto: the first CUDA GPU if there is one, else the CPU); a missing GPU is an error."""
    device = str(device)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise DeviceError(f"device={device}: choose device=auto, device=cpu or device=cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={device}: no CUDA device here; use device=cpu (or auto)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_supported() -> bool:
    """Whether the current CUDA GPU runs bf16 natively (compute capability 8.0 and newer, or ROCm).

    `torch.cuda.is_bf16_supported()` also answers True on V100 / T4 (sm70 / sm75), where bf16 is only
    emulated and slower than fp16: poc59 asks without emulation, so those GPUs get 16-mixed.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def auto_precision() -> str:
    """Lightning precision by device: bf16-mixed on GPUs with native bf16, 16-mixed on older GPUs, 32-true on CPU."""
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if bf16_supported() else "16-mixed"


def autocast_dtype(precision: Any, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `precision` on `device` (see the module doc); None = float32."""
    name = _NAMES.get(str(precision).lower())
    if name is None:
        raise ValueError(f"precision={precision!r}: choose auto, 32, bf16 or fp16")
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            log.warning("precision=%s needs a CUDA device; running float32 on %s", precision, device)
        return None
    if name == "auto":
        name = "bf16" if auto_precision() == "bf16-mixed" else "fp16"
    return _DTYPES[name]


def lightning_precision(dtype: torch.dtype | None) -> str:
    """The Lightning name of an autocast dtype (as summary.json and reports show precision)."""
    return {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")  # type: ignore[arg-type]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA only; a no-op context on CPU or for float32."""
    if dtype is None or dtype == torch.float32 or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (a no-op off CUDA); `device`'s, not the default GPU's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory with its meaning: CUDA max allocated on GPU, else peak RSS of this process."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "CUDA max allocated (this process)"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"bytes": int(rss_kib) * 1024, "kind": "peak resident set size of the main process"}

"""Where poc59's configs and caches live, and the OmegaConf resolvers they use.

`conf/` sits at the top of a checkout and inside the package of a built wheel
(pyproject's force-include); `config_dir()` finds whichever exists, so
`python -m poc59.train` works from an editable install and from a wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the poc59 package (this file is poc59/core/config.py)


class SettingError(ValueError):
    """A setting that cannot work; the message names the key and the fix (the command exits 2)."""


def plain(node: Any) -> dict:
    """A config mapping (a DictConfig, or a mapping that may hold OmegaConf nodes and tuples) as plain, resolved
    dicts and lists all the way down ({} for null): what JSON, YAML and keyword arguments take."""
    return _containers(node) if node is not None else {}


def _containers(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _containers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_containers(v) for v in value]
    return value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"a.b.c": leaf} (an empty mapping is kept as a leaf {})."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_dir(needs: str = "train.yaml") -> Path:
    """The `conf/` folder: inside the package (wheel) or at the checkout's top; the first that holds `needs`."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parents[1] / "conf"):
        if (candidate / needs).exists():
            return candidate
    raise FileNotFoundError(
        f"poc59's configs were not found in {_PACKAGE_DIR / 'conf'} or {_PACKAGE_DIR.parents[1] / 'conf'}; "
        "reinstall poc59 (pip install -e . from a checkout, or the wheel)"
    )


def config_groups() -> dict[str, list[str]]:
    """{group: its options} of conf/ (`hydra/launcher` included), read from the folder alone (no Hydra)."""
    root = config_dir()
    found = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            found[folder.relative_to(root).as_posix()] = options
    return found


def cache_root() -> Path:
    """poc59's cache folder: $POC59_CACHE, else $XDG_CACHE_HOME/poc59, else ~/.cache/poc59."""
    if os.environ.get("POC59_CACHE"):
        return Path(os.environ["POC59_CACHE"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return (Path(base).expanduser() / "poc59").resolve()


def _partition_has_gpus(partition: str | None) -> bool | None:
    """Whether `sinfo` lists a GPU GRES on the partition (the default one if None); None if sinfo cannot tell."""

    if not shutil.which("sinfo"):
        return None
    cmd = ["sinfo", "--noheader", "--format=%G"] + (["--partition", str(partition)] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return "gpu" in out.stdout


def gpus_per_node(accelerator: Any, devices: Any, partition: Any = None) -> int:
    """GPUs a SLURM job asks per node for `trainer.accelerator` / `trainer.devices` (conf/hydra/launcher/slurm.yaml).

    SLURM starts one process per device (tasks_per_node = devices), so the device count must be an
    integer: `auto` or a list of indices is refused with the setting to use. cpu -> 0 GPUs; gpu/cuda ->
    `devices`; auto -> `devices` if `sinfo` shows GPUs on the partition, 0 if it shows none.
    """
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(
            f"trainer.devices={devices}: a SLURM launch needs an integer device count per node (SLURM starts "
            f"one process per device; tasks_per_node and gpus_per_node follow it). Set trainer.devices=N, "
            f"e.g. trainer.devices=1 (and trainer.num_nodes=M for several nodes), once for the whole sweep: its runs "
            f"share one SLURM request, so trainer.devices is not swept"
        )
    acc = str(accelerator).lower()
    if acc == "cpu":
        return 0
    if acc in ("gpu", "cuda"):
        return devices
    if acc == "auto":
        has_gpus = _partition_has_gpus(partition)
        if has_gpus is None:
            raise ValueError(
                f"trainer.accelerator=auto: cannot tell whether SLURM partition {partition or '(default)'} has GPUs "
                "(sinfo did not answer). Set trainer.accelerator=gpu or trainer.accelerator=cpu"
            )
        return devices if has_gpus else 0
    raise ValueError(
        f"trainer.accelerator={accelerator}: the SLURM launcher knows cpu, gpu (cuda) and auto; "
        "set trainer.accelerator=gpu or trainer.accelerator=cpu"
    )


def local_gpus_per_node(accelerator: Any, devices: Any) -> int:
    """GPUs one run of conf/hydra/launcher/local.yaml claims: as `gpus_per_node`, where `auto` means this
    machine's CUDA GPUs (there is no SLURM partition to ask)."""
    if str(accelerator).lower() == "auto":
        import torch  # here, not at the top: commands import this module before parsing their arguments

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    return gpus_per_node(accelerator, devices)


def _auto_precision() -> str:
    """`poc59.core.device.auto_precision`, imported when a config resolves it: that module imports torch,
    which a command's `--help` must not wait for."""
    from poc59.core.device import auto_precision

    return auto_precision()


def register_resolvers() -> None:
    """Resolvers used by conf/: ${poc59.cache:}, ${poc59.precision:}, ${poc59.first:...},
    ${poc59.gpus_per_node:accelerator,devices,partition} and ${poc59.local_gpus_per_node:accelerator,devices}
    (conf/hydra/launcher/). Idempotent."""
    if not OmegaConf.has_resolver("poc59.cache"):
        OmegaConf.register_new_resolver("poc59.cache", lambda: str(cache_root()))
    if not OmegaConf.has_resolver("poc59.precision"):
        OmegaConf.register_new_resolver("poc59.precision", _auto_precision)
    if not OmegaConf.has_resolver("poc59.gpus_per_node"):
        OmegaConf.register_new_resolver("poc59.gpus_per_node", gpus_per_node)
    if not OmegaConf.has_resolver("poc59.local_gpus_per_node"):
        OmegaConf.register_new_resolver("poc59.local_gpus_per_node", local_gpus_per_node)
    if not OmegaConf.has_resolver("poc59.first"):
        # the first argument that is set: ${poc59.first:${run_dir},default}
        OmegaConf.register_new_resolver(
            "poc59.first", lambda *values: next((v for v in values if v not in (None, "")), None)
        )


def error_text(err: BaseException) -> str:
    """An exception for a one-line message: its type and first line without a closing full stop, or its type
    alone when it says nothing (a bare assert)."""
    lines = str(err).strip().splitlines()
    text = lines[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

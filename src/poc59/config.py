"""Where poc59's configs and caches live, and the OmegaConf resolvers they use.

`conf/` sits at the top of a checkout and inside the package of a built wheel
(pyproject's force-include); `config_dir()` finds whichever exists, so
`python -m poc59.train` works from an editable install and from a wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The `conf/` folder: inside the package (wheel) or at the checkout's top."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"poc59's configs were not found in {_PACKAGE_DIR / 'conf'} or {_PACKAGE_DIR.parents[1] / 'conf'}; "
        "reinstall poc59 (pip install -e . from a checkout, or the wheel)"
    )


def cache_root() -> Path:
    """poc59's cache folder: $POC59_CACHE, else $XDG_CACHE_HOME/poc59, else ~/.cache/poc59."""
    if os.environ.get("POC59_CACHE"):
        return Path(os.environ["POC59_CACHE"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return (Path(base).expanduser() / "poc59").resolve()


def auto_precision() -> str:
    """Lightning precision by device: bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-true on CPU.

    bf16 autocast on CPU is ~30x slower than fp32 (measured), so CPU trains in 32-bit.
    """
    import torch

    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def register_resolvers() -> None:
    """Resolvers used by conf/: ${poc59.cache:}, ${poc59.precision:}. Idempotent."""
    if not OmegaConf.has_resolver("poc59.cache"):
        OmegaConf.register_new_resolver("poc59.cache", lambda: str(cache_root()))
    if not OmegaConf.has_resolver("poc59.precision"):
        OmegaConf.register_new_resolver("poc59.precision", auto_precision)

"""Train one model: `python -m poc59.train [Hydra overrides]`.

Composes conf/train.yaml with the overrides (Hydra; `-m` sweeps go to the configured launcher) and runs
`poc59.training.run.train`. Exit 0 done, 2 a setting or the data is wrong (one plain message), 1 a bug.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from poc59.core.config import config_dir, register_resolvers
from poc59.training.distributed import adopt_submitit_local_ranks
from poc59.training.run import USER_ERRORS, train

log = logging.getLogger("poc59.train")


def _encoder_presets() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "encoder").glob("*.yaml"))


def check_encoder_choice(argv: list[str]) -> None:
    """Say which presets exist, and how to name any smp/timm encoder, before Hydra's terser error."""
    presets = _encoder_presets()
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "encoder" and value and value not in presets and "," not in value and "(" not in value:
            sys.exit(
                f"error: unknown encoder preset {value!r}. Presets: {', '.join(presets)}.\n"
                f"Any segmentation-models-pytorch or timm encoder works by name: "
                f"encoder=custom encoder.name={value if value.startswith('tu-') else 'tu-' + value}"
            )


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        adopt_submitit_local_ranks(cfg.trainer.devices, cfg.trainer.num_nodes)
        summary = train(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    except Exception:
        log.exception("Run failed")  # in a sweep Hydra keeps only the message; the log keeps the traceback
        raise
    return summary["val/mIoU"]  # the value a Hydra sweeper optimises


def main() -> None:
    register_resolvers()
    check_encoder_choice(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    # Run the importable poc59.train, not this __main__ copy: submitit pickles the task
    # function by reference, which only works for a function of an importable module.
    from poc59.train import main as _main

    _main()

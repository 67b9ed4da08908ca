"""Any model file poc59 writes, loaded back as one interface: `load_model(path)` -> TrainedModel.

evaluate, predict and export start here, so a checkpoint and an exported model are used alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from poc59.artifacts.ensemble import load_ensemble, members_of
from poc59.artifacts.exported import load_onnx, load_torchscript
from poc59.artifacts.trained import ModelLoadError, TrainedModel, best_checkpoint, load_checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A checkpoint (.ckpt) or an exported model (.onnx, .pt TorchScript with its model card)."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx":
        return load_onnx(path)
    if path.suffix == ".pt":
        return load_torchscript(path, device)
    return load_checkpoint(path, device)


def load_models(
    ckpt: str | Path | list | None = None,
    run_dirs: list | None = None,
    sweep: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """One model (ckpt=<file>), or the ensemble of ckpt=[...], run_dirs=[...] or sweep= (their best.ckpt)."""
    members = members_of(ckpt, run_dirs, sweep)
    if members is None:
        if ckpt is None:
            raise ModelLoadError("name the model: ckpt=<file> (or an ensemble: ckpt=[a,b], run_dirs=[...], sweep=)")
        return load_model(ckpt, device)
    return load_ensemble(members, device)


def locate_checkpoint(
    run_dir: str | Path | None, ckpt: str | Path | None, error: type[Exception] = ModelLoadError
) -> tuple[Path, Path | None]:
    """(checkpoint, run folder or None): `ckpt`, else the run folder's best (`best_checkpoint`); `error` names the fix."""
    run = Path(run_dir).expanduser().resolve() if run_dir is not None else None
    if run is not None and not (run / "config.yaml").is_file():
        raise error(
            f"{run}: not a run folder (no config.yaml). run_dir= names a folder written by python -m poc59.train, "
            "e.g. outputs/runs/<name>; or pass ckpt=<file> data.root=<dataset>"
        )
    if ckpt is None:
        ckpt = best_checkpoint(run)
        if not ckpt.is_file():
            raise error(
                f"{ckpt} not found: the run has not finished a validation epoch. "
                f"Pass ckpt={run / 'checkpoints' / 'last.ckpt'} to use its latest state, or wait for the run"
            )
    return Path(ckpt).expanduser().resolve(), run

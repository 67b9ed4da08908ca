"""Several trained models used as one: the fold ensemble of a cross-validation (or any members that agree).

The members' class probabilities are averaged: p = (1/M) sum_m softmax(z_m), and the ensemble's output is
log p. Its softmax is the mean probability and its argmax the ensemble's label, so every consumer of
logits (the sliding window's blend, flip TTA, argmax, export) takes an ensemble unchanged, with the
same tiling and memory bound as one model (one member's logits exist at a time beside the running sum).
It is one `nn.Module`, so it exports as one ONNX graph or one TorchScript module.

Members must agree on what a prediction means: the class table (names, palette, ignore label), the
geometry (policy, image size, max side). Each keeps its own normalisation (inside its `Segmenter`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poc59.artifacts.card import ModelCard
from poc59.artifacts.trained import ModelLoadError, TrainedModel, best_checkpoint, is_runs_best, load_checkpoint

COMBINATION = "mean of the members' softmax probabilities; output log of that mean (its argmax is the label)"


class EnsembleSegmenter(nn.Module):
    """uint8 [B, 3, H, W] -> log of the mean of the members' softmax probabilities [B, C, H, W]."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = self.members[0](images).float().softmax(1)
        for member in self.members[1:]:
            total = total + member(images).float().softmax(1)
        return (total / len(self.members)).clamp_min(torch.finfo(torch.float32).tiny).log()


def _agreement(model: TrainedModel) -> dict[str, Any]:
    return {"classes": model.classes.to_dict(), "geometry": dict(model.geometry)}


def load_ensemble(paths: Sequence[str | Path], device: str | torch.device = "cpu") -> TrainedModel:
    """The checkpoints as one TrainedModel (one path: that model itself); ModelLoadError naming a member
    whose classes or geometry differ from the first's."""
    if not paths:
        raise ModelLoadError("an ensemble needs at least one checkpoint: ckpt=[a.ckpt,b.ckpt,...]")
    paths = [Path(p).expanduser() for p in paths]
    for p in paths:
        if p.suffix in (".onnx", ".pt"):
            raise ModelLoadError(
                f"{p}: an ensemble is built from checkpoints (.ckpt); export the ensemble itself "
                "(python -m poc59.export ckpt=[a.ckpt,b.ckpt]) for one ONNX or TorchScript file"
            )
    if len(set(paths)) != len(paths):
        raise ModelLoadError(f"a checkpoint is listed twice in {', '.join(map(str, paths))}: list each member once")
    members = [load_checkpoint(p, device) for p in paths]
    if len(members) == 1:
        return members[0]
    first = _agreement(members[0])
    for m in members[1:]:
        here = _agreement(m)
        for what in ("classes", "geometry"):
            if here[what] != first[what]:
                raise ModelLoadError(
                    f"{m.source}: its {what} differ from {members[0].source}'s ({here[what]} vs {first[what]}); "
                    "an ensemble's members must predict the same classes at the same geometry"
                )
    card: ModelCard = replace(
        members[0].card,  # classes, geometry, normalisation of every member; the scores are each member's own
        metrics={"ensemble": "each member's own val mIoU is in provenance.ensemble.members"},
    ).with_provenance(ensemble={"combination": COMBINATION, "members": [member_record(m) for m in members]})
    return TrainedModel(
        segmenter=EnsembleSegmenter([m.segmenter for m in members]).to(device).eval(),
        card=card,
        source=members[0].source,
        run_dir=members[0].run_dir,
        extra={"members": members},
    )


def member_record(model: TrainedModel) -> dict[str, Any]:
    """What the model card says of one member: its file, run, epoch, network, and its run's best val mIoU
    and fold (from summary.json, when the file is the run's best.ckpt). Export adds each file's hash."""
    summary_file = model.run_dir / "summary.json" if model.run_dir else None
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.is_file() else {}
    best = is_runs_best(model, model.run_dir, summary)
    return {
        "checkpoint": str(model.source),
        "run_dir": str(model.run_dir) if model.run_dir else None,
        "epoch": model.extra.get("epoch"),
        "network": dict(model.network),
        "val/mIoU": summary.get("val/mIoU") if best else None,
        "cv": (summary.get("provenance", {}).get("data", {}) or {}).get("cv") if best else None,
    }


def members_of(
    ckpt: str | Path | Sequence[str | Path] | None = None,
    run_dirs: Sequence[str | Path] | None = None,
    sweep: str | Path | None = None,
) -> list[Path] | None:
    """The member checkpoints named by ckpt=[...], run_dirs=[...] (each run's best.ckpt) or sweep= (the
    best.ckpt of each of its finished runs, in job order); None when no ensemble is asked for."""
    given = [x for x in (ckpt if isinstance(ckpt, list | tuple) else None, run_dirs, sweep) if x]
    if not given:
        return None
    if len(given) > 1:
        raise ModelLoadError("name an ensemble's members once: ckpt=[...], run_dirs=[...] or sweep=<folder>")
    if isinstance(ckpt, list | tuple):
        return [Path(p).expanduser().resolve() for p in ckpt]
    folders = [Path(d).expanduser().resolve() for d in run_dirs] if run_dirs else _finished_runs(Path(sweep))
    out = []
    for run in folders:
        best = best_checkpoint(run)
        if not best.is_file():
            raise ModelLoadError(f"{best} not found: every member needs its best.ckpt (has {run.name} finished?)")
        out.append(best)
    return out


def _finished_runs(sweep: Path) -> list[Path]:
    """The finished runs of a sweep that is one cross-validation of one configuration: every fold once, one
    partition (a sweep of several encoders or seeds holds each fold several times: name one's runs)."""
    sweep = sweep.expanduser().resolve()
    if not sweep.is_dir():
        raise ModelLoadError(f"sweep folder {sweep} not found: sweep= names a folder of runs (outputs/sweeps/<time>)")
    runs = sorted(
        (d for d in sweep.iterdir() if d.is_dir() and (d / "summary.json").is_file()),
        key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
    )
    if not runs:
        raise ModelLoadError(f"{sweep}: no finished run (no <run>/summary.json) to build an ensemble from")
    folds = [
        (json.loads((d / "summary.json").read_text()).get("provenance", {}).get("data") or {}).get("cv") for d in runs
    ]
    keys = [(f["partition_fingerprint"], f["fold"]) if f else None for f in folds]
    if None in keys or len(set(keys)) != len(keys) or len({k[0] for k in keys}) != 1:
        raise ModelLoadError(
            f"{sweep}: sweep= builds the fold ensemble of one cross-validation (each fold once, one partition), "
            f"and this sweep's {len(runs)} finished runs are not that (several configurations, seeds or no folds): "
            "name the members with run_dirs=[...] or ckpt=[...]"
        )
    return runs


def ensemble_name(members: Sequence[Path]) -> str:
    """A folder name for an ensemble's outputs, from its members' run folders (`ensemble-0-1-2`)."""
    return "ensemble-" + "-".join(Path(m).parent.parent.name for m in members)

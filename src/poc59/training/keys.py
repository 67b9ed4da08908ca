"""What each key of a run's config is: one table that resume (`poc59.training.resume`) and compare
(`poc59.comparison.run`) both read.

Every key is one of these kinds (`KINDS`); a key the table does not name is IDENTITY.

- IDENTITY: what is trained and how it is measured (the model, the loss, the data's settings, the
  optimiser...): it changes the result. Resume refuses a change; compare ranks configurations apart.
- LENGTH: how long the run trains (trainer.max_epochs, trainer.max_steps): a resumed run may go on for
  longer; compare ranks runs of other lengths apart.
- REPEAT: what differs between repeats of one configuration (the seed, the split file, the fold of a
  cross-validation): resume refuses a change (it would be another run); compare groups the repeats.
- LOCATION: where the run, its inputs and its records are (paths.*, the run folder, the cache, the
  checkpoint folders, the loggers, Hydra's launcher): resume and compare ignore it. The data themselves are
  guarded by the data fingerprint in split.json and summary.json, not by the folder they were found in.
- SPEED: how fast or how visibly the run goes, not what it computes (threads, module.channels_last and
  compile, the progress bar, log lines and pictures): resume and compare ignore it.

A run recorded before the config was one object tree (its network's settings all in `encoder`, the decoder,
learning rate and batch size included; `model` holding how the network ran) is read in today's layout by
`current`, so that resume and compare see the same keys for the same run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

IDENTITY, LENGTH, REPEAT, LOCATION, SPEED = "identity", "length", "repeat", "location", "speed"
KINDS = (IDENTITY, LENGTH, REPEAT, LOCATION, SPEED)


def _synthetic(flat: Mapping[str, Any]) -> bool:
    """Whether the config generates the built-in synthetic set (data.synthetic set), whose data.root is a
    folder of the cache named by data.synthetic's own keys (which are IDENTITY)."""
    return any(k.startswith("data.synthetic.") for k in flat) or flat.get("data.synthetic") not in (None, {})


# (pattern, kind, condition or None). A pattern names a key and everything under it; "*" stands for one
# part of a key ("callbacks.*.dirpath"). The first pattern that matches (and whose condition holds) decides.
TABLE: tuple[tuple[str, str, Callable[[Mapping[str, Any]], bool] | None], ...] = (
    ("trainer.max_epochs", LENGTH, None),
    ("trainer.max_steps", LENGTH, None),
    ("seed", REPEAT, None),
    ("data.seed", REPEAT, None),  # ${seed}
    ("data.split_file", REPEAT, None),  # the split's own fingerprint keeps runs of other splits apart
    ("data.cv.fold", REPEAT, None),  # the folds of one cross-validation are one configuration
    ("paths", LOCATION, None),
    ("run_dir", LOCATION, None),
    ("run_name", LOCATION, None),
    ("resume", LOCATION, None),  # resume=never: the same run in a new folder
    ("ckpt_path", LOCATION, None),  # the checkpoint an attempt starts from
    ("hydra", LOCATION, None),  # the launcher: where the job ran
    ("data.cache_dir", LOCATION, None),  # the preload cache, keyed by the files it holds
    ("data.root", LOCATION, _synthetic),  # $POC59_CACHE/synthetic/n..-aug..-seed..: only where the cache is
    ("trainer.default_root_dir", LOCATION, None),
    ("callbacks.*.dirpath", LOCATION, None),
    ("logger", LOCATION, None),  # where the numbers are recorded, not how they are made
    ("model.weights_dir", LOCATION, None),  # where encoder.weights=imagenet is read from
    ("threads", SPEED, None),  # floating-point order may differ in the last digits, nothing more
    ("module.channels_last", SPEED, None),  # how the network runs, not what it computes
    ("module.compile", SPEED, None),
    ("module.compile_options", SPEED, None),
    ("module._target_", SPEED, None),  # the LightningModule class: the network, loss and optimiser are apart
    ("model.channels_last", SPEED, None),  # the same keys in a run recorded before `current`'s layout
    ("model.compile", SPEED, None),
    ("model.compile_options", SPEED, None),
    ("trainer.enable_progress_bar", SPEED, None),
    ("trainer.log_every_n_steps", SPEED, None),
    ("trainer.enable_model_summary", SPEED, None),  # a table at fit start
    ("trainer.num_sanity_val_steps", SPEED, None),  # a check before fit; no state it leaves is saved
    ("callbacks.progress_bar", SPEED, None),
    ("callbacks.epoch_log", SPEED, None),  # a log line per epoch
    ("callbacks.val_overlays", SPEED, None),  # pictures in TensorBoard
)


ENCODER = "poc59.model.factory.Encoder"
DECODER = "poc59.model.factory.Decoder"
MODEL = "poc59.model.factory.build_model"
MODULE = "poc59.model.module.SegmentationModule"


def current(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved config (its config.yaml) in today's layout; a config in it already is returned as it
    is (a copy). A run recorded before the `model`, `decoder` and `module` nodes had `encoder.decoder` and
    `encoder.decoder_kwargs` (now the `decoder` node), `encoder.lr` and `encoder.batch_size` (recommendations
    whose values the run took in optimizer.lr and data.batch_size, which it records), `model.channels_last`,
    `model.compile` and `model.compile_options` (now `module`'s) and `run_name` (now part of run_dir)."""
    new = copy.deepcopy(dict(config))
    enc = new.get("encoder")
    if "decoder" in new or not isinstance(enc, Mapping) or "decoder" not in enc:
        return new
    enc = dict(enc)
    dec = {"_target_": DECODER, "name": enc.pop("decoder"), "kwargs": enc.pop("decoder_kwargs", None) or {}}
    enc.pop("lr", None)
    enc.pop("batch_size", None)
    enc = {"_target_": ENCODER, **enc}
    ran = new.pop("model", None) or {}
    new.pop("run_name", None)
    weights_dir = (new.get("paths") or {}).get("weights_dir")
    new.update(
        encoder=enc,
        decoder=dec,
        model={
            "_target_": MODEL,
            "encoder": copy.deepcopy(enc),
            "decoder": copy.deepcopy(dec),
            "weights_dir": weights_dir,
        },
        module={"_target_": MODULE, **ran},
    )
    return new


def _matches(pattern: str, key: str) -> bool:
    parts, wanted = key.split("."), pattern.split(".")
    return len(parts) >= len(wanted) and all(w in ("*", p) for w, p in zip(wanted, parts, strict=False))


def kind(key: str, *configs: Mapping[str, Any]) -> str:
    """The kind (`KINDS`) of a flattened config key ("trainer.max_epochs"). A conditional row holds only when
    its condition holds in every one of `configs` (flattened: `poc59.core.config.flatten`), so a resume
    that compares two configs treats a key as a location only if both say it is one."""
    for pattern, found, condition in TABLE:
        if _matches(pattern, key) and (condition is None or all(condition(c) for c in configs)):
            return found
    return IDENTITY

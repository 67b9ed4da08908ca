"""Pretrained encoder weights: poc59's weight cache, loading files into smp encoders, and fetching.

Training never downloads. ImageNet weights live in poc59's weight cache
(`cache_root()/weights`, i.e. $POC59_CACHE/weights), one file per encoder:
`<encoder name>.imagenet.safetensors`, holding `model.encoder.state_dict()` of an
smp model built with ImageNet weights. `fetch()` (CLI: `python -m poc59.weights
fetch encoder=<preset>`) writes that file on a machine that can reach the model
hub; anywhere else it fails fast and says how to bring a file in by hand.

`load_encoder_weights()` loads a file into a built encoder and then checks that
every encoder tensor equals the file's (smp silently ignores a timm weights file
when `encoder_weights=None`; poc59 does not rely on smp for loading). It reads:
- an smp encoder state dict (keys of `model.encoder.state_dict()`), also inside a
  whole smp model or Lightning checkpoint (keys `...encoder.<key>`);
- for `tu-` encoders, a plain timm checkpoint (keys of `timm.create_model(name)`):
  timm's features-only wrapper renames modules (`stages.0` -> `model.stages_0`), so
  keys are matched with the `model.` prefix dropped and dots read as underscores;
  tensors of modules the wrapper drops (classifier heads, final norms) are ignored.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from poc59.core.atomic import write_bytes
from poc59.core.config import SettingError
from poc59.model.encoders import check_encoder_name

# The cache's locations and the hub probe live in poc59.model.hub (no model library imported there, so
# `python -m poc59.weights fetch` answers an unreachable hub at once); their names stay importable from here.
from poc59.model.hub import (
    FETCH_MODULE,  # noqa: F401 (kept importable from here)
    IMAGENET,
    HubUnreachableError,
    cached_weights_path,
    check_hub,
    default_weights_dir,  # noqa: F401 (kept importable from here)
    fetch_command,
    resolve_weights_dir,  # noqa: F401 (kept importable from here)
    unreachable_message,
)
from poc59.model.segmenter import network_state

log = logging.getLogger(__name__)

# Top-level modules smp's own encoders delete (classification heads): tensors under them may be dropped.
_NATIVE_HEAD_PREFIXES = ("fc", "head", "classifier", "last_linear", "_fc", "logits")


class MissingWeightsError(FileNotFoundError):
    """The requested weights file is not there (cache not filled, or a wrong path)."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the encoder (other keys or shapes)."""


def missing_weights_message(
    name: str, path: Path, kwargs: Mapping[str, Any] | None = None, weights_dir: str | Path | None = None
) -> str:
    return (
        f"No ImageNet weights for encoder {name} in poc59's weight cache: {path} does not exist "
        "(training never downloads).\n"
        f"  - fetch them once on a machine that reaches the model hub (e.g. a login node; the cache is "
        f"$POC59_CACHE/weights, shared or copied to where training runs):\n"
        f"      {fetch_command(name, kwargs, weights_dir)}\n"
        "  - or use a weights file you have: encoder.weights=/path/to/file (.safetensors or .pth: an smp encoder "
        "state dict, or a timm checkpoint for tu- encoders)\n"
        "  - or train from scratch: encoder.weights=null"
    )


# --------------------------------------------------------------------------- reading and loading


def read_state_dict(path: str | Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from {"state_dict": ...}/{"model": ...}/{"module": ...}.

    The format is read from the file's first bytes, not its name: a safetensors file (an 8-byte header
    length, then the JSON header) or a torch checkpoint (a zip archive since torch 1.6, a pickle before),
    read with weights_only=True. `lazy`: keys and shapes only, as cheaply as the format allows (a
    safetensors header gives meta tensors; a torch zip checkpoint is memory-mapped, its tensors not read
    until used; an old pickle checkpoint can only be read whole). WeightsMismatchError names a file that
    is not weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    kind = _weights_format(path)
    try:
        if kind == "safetensors":
            obj: Any = _safetensors_shapes(path) if lazy else load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy and kind == "torch zip")
    except Exception as e:  # corrupt, truncated, or not a weights file
        if kind == "other":
            raise WeightsMismatchError(
                f"{path} is not a weights file: neither safetensors nor a torch checkpoint "
                f"(torch.load: {type(e).__name__}). {_EXPECTED_FILE}"
            ) from e
        hint = " (torch files are read with weights_only=True: save a plain state dict, or use .safetensors)"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsMismatchError(
            f"cannot read weights file {path} ({kind}): {type(e).__name__}: {reason}"
            f"{hint if kind != 'safetensors' else ''}. {_EXPECTED_FILE}"
        ) from e
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise WeightsMismatchError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict. {_EXPECTED_FILE}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsMismatchError(f"weights file {path} holds no tensors. {_EXPECTED_FILE}")
    return tensors


_EXPECTED_FILE = (
    "Expected a .safetensors or .pth file holding a state dict (an smp encoder's model.encoder.state_dict(), "
    "a whole smp model or Lightning checkpoint, or for tu- encoders a timm model's), or encoder.weights=null "
    "to train from scratch"
)


def _weights_format(path: Path) -> str:
    """ "safetensors", "torch zip" or "other" (an old pickle checkpoint, or not weights), from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch zip"
    if head[8:9] == b"{":  # a header's length, then its JSON (also when the file was cut short)
        return "safetensors"
    return "other"


def _safetensors_shapes(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors of their shapes: its header only is read."""
    with safe_open(str(path), framework="pt") as f:
        return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}


def _norm_key(key: str, timm_universal: bool) -> str:
    if key.startswith("module."):
        key = key[len("module.") :]
    if not timm_universal:
        return key
    # timm's features-only wrappers: FeatureListNet flattens `stages.0` to `stages_0`, FeatureGetterNet
    # nests the model (`model.model.`), smp prefixes `model.`.
    return re.sub(r"^(model\.)+", "", key).replace(".", "_")


def _views(tensors: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The file as is, and the encoder part of whole-model checkpoints (keys `<prefix>encoder.<key>`)."""
    views = [("", tensors)]
    prefixes: dict[str, int] = {}
    for key in tensors:
        index = key.find("encoder.")
        if index >= 0 and (index == 0 or key[index - 1] == "."):
            prefix = key[: index + len("encoder.")]
            prefixes[prefix] = prefixes.get(prefix, 0) + 1
    for prefix, _ in sorted(prefixes.items(), key=lambda item: -item[1])[:4]:
        views.append((prefix, {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}))
    return views


def _droppable_keys(name: str, kwargs: Mapping[str, Any] | None, timm_universal: bool) -> set[str] | None:
    """Normalised keys of a full timm model that the features-only encoder lacks (heads); None: use prefixes."""
    if not timm_universal:
        return None

    base = name[3:]
    try:
        with torch.device("meta"):
            full = timm.create_model(base, pretrained=False, **dict(kwargs or {}))
    except Exception:
        try:
            full = timm.create_model(base, pretrained=False, **dict(kwargs or {}))
        except Exception:
            return None
    return {_norm_key(k, True) for k in full.state_dict()}


def _short(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _match(
    view: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    timm_universal: bool,
    droppable: set[str] | None,
) -> dict[str, Any]:
    by_norm: dict[str, list[str]] = {}
    for key in view:
        by_norm.setdefault(_norm_key(key, timm_universal), []).append(key)
    mapped: dict[str, str] = {}
    missing, shapes, ambiguous = [], [], []
    seen: set[str] = set()  # file keys matched by name (also those reported for shape or ambiguity)
    for key, tensor in target.items():
        candidates = by_norm.get(_norm_key(key, timm_universal), [])
        if not candidates:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        seen.update(candidates)
        if len(candidates) > 1:
            ambiguous.append(f"{key} <- {candidates}")
            continue
        source = view[candidates[0]]
        if tuple(source.shape) != tuple(tensor.shape):
            shapes.append(f"{candidates[0]}: file {tuple(source.shape)} vs encoder {tuple(tensor.shape)}")
            continue
        mapped[key] = candidates[0]
    unexpected = []
    for key in view:
        if key in seen or key.endswith("num_batches_tracked"):
            continue
        if droppable is not None:  # tu-: tensors of the full timm model that the features-only encoder drops
            if _norm_key(key, timm_universal) in droppable:
                continue
        elif _norm_key(key, False).split(".")[0] in _NATIVE_HEAD_PREFIXES:
            continue
        unexpected.append(key)
    return dict(mapped=mapped, missing=missing, shapes=shapes, ambiguous=ambiguous, unexpected=unexpected)


def fit_encoder_weights(
    tensors: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    name: str,
    path: Path,
    kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Which of a file's `tensors` fill which tensors of encoder `name`'s state dict `target`, by key and shape.

    Returns (the file's view whose keys were matched, {encoder key: file key}); WeightsMismatchError names
    the file and what does not fit. Only keys and shapes are read, so meta tensors do (see `check_weights_file`).
    """
    timm_universal = name.startswith("tu-")
    droppable = _droppable_keys(name, kwargs, timm_universal)
    views = dict(_views(dict(tensors)))
    best: tuple[str, dict[str, Any]] | None = None
    for prefix, view in views.items():
        result = _match(view, dict(target), timm_universal, droppable)
        if not (result["missing"] or result["shapes"] or result["ambiguous"] or result["unexpected"]):
            best = (prefix, result)
            break
        score = len(result["mapped"])
        if best is None or score > len(best[1]["mapped"]):
            best = (prefix, result)
    assert best is not None
    prefix, result = best
    problems = []
    if result["missing"]:
        problems.append(
            f"{len(result['missing'])} of the encoder's {len(target)} tensors are not in the file "
            f"(e.g. {_short(result['missing'])})"
        )
    if result["shapes"]:
        problems.append(
            f"{len(result['shapes'])} tensors have other shapes (e.g. {_short(result['shapes'], 3)}; "
            "were encoder.kwargs different when the file was made?)"
        )
    if result["ambiguous"]:
        problems.append(f"ambiguous keys: {_short(result['ambiguous'], 3)}")
    if result["unexpected"]:
        problems.append(
            f"the file has {len(result['unexpected'])} tensors this encoder does not have "
            f"(e.g. {_short(result['unexpected'])}; saved for a bigger or different model?)"
        )
    if problems:
        expected = "an smp encoder state dict (model.encoder.state_dict())"
        if timm_universal:
            expected += f" or a timm checkpoint of timm.create_model({name[3:]!r})"
        raise WeightsMismatchError(
            f"weights file {path} does not fit encoder {name}: " + "; ".join(problems) + ". "
            f"The file's first keys: {_short(list(tensors), 4)}. Expected {expected}; "
            "or train from scratch with encoder.weights=null."
        )
    return views[prefix], result["mapped"]


def check_weights_file(path: str | Path, encoder: nn.Module, name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """Whether weights file `path` fits `encoder` (of encoder `name`), as far as keys and shapes tell,
    without reading its tensors (see `read_state_dict(lazy=True)`): `encoder` may live on the meta device.
    Returns the number of tensors it would load; WeightsMismatchError names the file and what does not fit."""
    path = Path(path).expanduser().resolve()
    return len(fit_encoder_weights(read_state_dict(path, lazy=True), encoder.state_dict(), name, path, kwargs)[1])


def load_encoder_weights(
    encoder: nn.Module, path: str | Path, name: str, kwargs: Mapping[str, Any] | None = None
) -> int:
    """Load weights file `path` into smp encoder `encoder` (of encoder `name`), verify, return the tensor count.

    Raises MissingWeightsError (no file), WeightsMismatchError (file does not fit: names the file and
    what did not match).
    """

    path = Path(path).expanduser().resolve()
    target = encoder.state_dict()
    view, mapped = fit_encoder_weights(read_state_dict(path), target, name, path, kwargs)
    state = {key: (view[mapped[key]] if key in mapped else value) for key, value in target.items()}
    # nn.Module's own loader: smp's encoder subclasses rename or drop keys in their load_state_dict overrides.
    nn.Module.load_state_dict(encoder, state, strict=True)

    loaded = encoder.state_dict()
    wrong = [k for k, source in mapped.items() if not torch.equal(loaded[k], view[source].to(loaded[k].dtype))]
    if wrong:
        raise RuntimeError(f"weights from {path} were not applied to encoder {name}: {_short(wrong)}")
    log.info("encoder %s: loaded %d tensors from %s (all verified)", name, len(mapped), path)
    return len(mapped)


# --------------------------------------------------------------------------- fetching (needs the hub)


def _atomic_save(tensors: dict[str, torch.Tensor], dest: Path, metadata: dict[str, str]) -> None:

    write_bytes(dest, save(tensors, metadata=metadata))


def fetch(
    name: str,
    weights_dir: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
    force: bool = False,
    timeout: float = 10.0,
    download_timeout: float = 900.0,
) -> Path:
    """Download encoder `name`'s ImageNet weights into the weight cache; return the file's path.

    Builds the smp encoder with ImageNet weights (`encoder_weights="imagenet"`; True for tu- encoders, i.e.
    timm's default pretrained tag, or the tag in the name: tu-convnext_tiny.fb_in22k), saves its state dict
    atomically as safetensors and checks it loads back. Without a reachable hub: HubUnreachableError, fast
    (the probe waits `timeout` s); a download that fails, or is not done within `download_timeout` s (a hub
    that stops answering), is a HubUnreachableError too, and leaves nothing in the weight cache.
    """
    kwargs = dict(kwargs or {})
    dest = cached_weights_path(name, weights_dir)
    if dest.is_file() and not force:
        log.info("%s is already there (force=true to fetch again)", dest)
        return dest
    try:  # first, before the slow imports: offline, fail within a second
        check_hub(timeout)
    except HubUnreachableError as e:
        raise HubUnreachableError(unreachable_message(name, dest, str(e), kwargs)) from None

    check_encoder_name(name)

    if name.startswith("tu-"):
        if not timm.models.is_model_pretrained(name[3:]):
            raise ValueError(f"timm has no pretrained weights for {name[3:]}: use encoder.weights=null")
        weights: Any = True
    else:
        available = list(smp.encoders.encoders.get(name, {}).get("pretrained_settings", {}))
        if IMAGENET not in available:
            raise ValueError(f"smp has no ImageNet weights for encoder {name} (it has: {available or 'none'})")
        weights = IMAGENET
    log.info("downloading ImageNet weights for encoder %s ...", name)
    done: dict[str, Any] = {}

    def download() -> None:
        try:
            done["encoder"] = smp.encoders.get_encoder(name, weights=weights, **kwargs)
        except Exception as e:  # the hub's and the libraries' many errors
            done["error"] = e

    worker = threading.Thread(target=download, name="poc59-weights-download", daemon=True)
    worker.start()
    worker.join(download_timeout)
    if worker.is_alive():
        why = f"the download did not finish within {download_timeout:.0f} s (the hub stopped answering?)"
        raise HubUnreachableError(unreachable_message(name, dest, why, kwargs))
    if "error" in done:
        e = done["error"]
        raise HubUnreachableError(
            unreachable_message(name, dest, f"the download failed ({type(e).__name__}: {e})", kwargs)
        ) from e
    encoder = done["encoder"]
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    source = ""
    if name.startswith("tu-"):
        cfg = timm.models.get_pretrained_cfg(name[3:])
        source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or ""
    else:
        source = smp.encoders.encoders[name]["pretrained_settings"][IMAGENET].get("repo_id", "")
    metadata = {
        "format": "poc59 smp-encoder-state-dict",
        "encoder": name,
        "weights": IMAGENET,
        "source": str(source),
        "kwargs": json.dumps(kwargs, sort_keys=True),
    }
    _atomic_save(tensors, dest, metadata)
    fresh = smp.encoders.get_encoder(name, weights=None, **kwargs)
    load_encoder_weights(fresh, dest, name, kwargs)
    log.info("saved %d tensors to %s (from %s)", len(tensors), dest, source or "the hub")
    return dest


def init_from_file(path: str | Path) -> Path:
    """The checkpoint `init_from=` names, or a SettingError naming the key when there is no such file (the
    training's preflight asks this before any data is touched; `init_from_checkpoint` again when it loads)."""
    found = Path(str(path)).expanduser()
    if not found.is_file():
        raise SettingError(
            f"init_from={path}: no such file; give a checkpoint, e.g. "
            "init_from=outputs/runs/<run>/checkpoints/best.ckpt, or drop init_from"
        )
    return found


def init_from_checkpoint(
    net: nn.Module, path: str | Path, network: Mapping[str, Any], classes: Mapping[str, Any]
) -> Path:
    """Start `net` from the network weights of a poc59 training checkpoint (`init_from=<ckpt>`: fine-tuning,
    e.g. a correction round from the previous round's best.ckpt). Only the weights are taken: epochs,
    optimizer, scheduler and the run folder start fresh, unlike a resume (`ckpt_path=`, `resume=`), which
    continues the checkpoint's own run. Refused with a SettingError naming init_from= when the file is not a
    poc59 training checkpoint, or when its network (`network`: the new run's model card's) or class table
    (`classes`: names and ignore id) differ from this run's, since the weights would not mean the same."""

    path = init_from_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, or not a torch file
        raise SettingError(f"init_from={path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    card = ((ckpt.get("hyper_parameters") or {}).get("card") or {}) if isinstance(ckpt, dict) else {}
    if "state_dict" not in (ckpt if isinstance(ckpt, dict) else {}) or not card:
        raise SettingError(
            f"init_from={path}: not a poc59 training checkpoint (no model card); give a best.ckpt or last.ckpt of python -m poc59.train"
        )
    theirs = card.get("classes") or {}
    if list(theirs.get("names") or []) != list(classes.get("names") or []) or theirs.get("ignore_index") != classes.get(
        "ignore_index"
    ):
        raise SettingError(
            f"init_from={path}: its classes {theirs.get('names')} are not this run's {list(classes.get('names') or [])}; "
            "fine-tune on data with the same class table, or train without init_from"
        )
    if dict(card.get("network") or {}) != dict(network):
        raise SettingError(
            f"init_from={path}: its network {card.get('network')} is not this run's {dict(network)}; "
            "train with the same encoder and decoder settings as that run, or without init_from"
        )
    state = network_state(ckpt["state_dict"])
    net.load_state_dict(state, strict=True)
    log.info("network weights from %s (init_from: a fresh run, not a resume)", path)
    return path

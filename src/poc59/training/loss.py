"""The loss a run trains with, built from the `loss` config group: the contract, checked before the data.

`loss._target_` names a `torch.nn.Module` class; its other keys are its constructor's arguments.

- A class whose constructor has a `class_weights` parameter (poc59's losses; smp's DiceLoss, FocalLoss,
  JaccardLoss, TverskyLoss) gets the data's class weights (data.class_weights) there.
- Any other (smp's LovaszLoss, torch.nn.CrossEntropyLoss) is built as given; the run's log and
  summary.json's provenance (`loss.class_weights_applied: false`) say that no class weights were applied.

The module calls it as `loss(logits, target)`: logits [B, C, H, W] float, target [B, H, W] int64 whose
unlabelled pixels hold the class table's ignore index (255). poc59's losses leave those pixels out; a
third-party loss must be told to (`+loss.ignore_index=255` for smp's and torch's), or it fails or, worse,
trains on them: `check_loss` builds the loss and makes that call on a small batch
(`poc59.model.losses.probe`) before any data is read.
"""

from __future__ import annotations

import inspect
import logging

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from poc59.core.classes import ClassTable
from poc59.core.config import SettingError, error_text
from poc59.model.losses import LossContractError, probe

log = logging.getLogger(__name__)

WEIGHTS = "class_weights"  # the constructor parameter that receives the data's class weights
EXAMPLE = "loss=custom loss._target_=torch.nn.CrossEntropyLoss +loss.ignore_index=255"  # conf/loss/custom.yaml


def loss_class(node: DictConfig) -> type[nn.Module]:
    """The class `loss._target_` names, or SettingError when it does not import or is no torch.nn.Module class."""
    if OmegaConf.is_missing(node, "_target_") or not node.get("_target_"):
        raise SettingError(f"loss._target_ is not set: name a torch.nn.Module class, e.g. {EXAMPLE}")
    target = str(node._target_)
    try:
        found = get_object(target)
    except Exception as err:  # a misspelt path, a module that fails to import: the user's setting
        raise SettingError(
            f"loss._target_={target}: cannot be imported ({error_text(err)}); name a torch.nn.Module class, "
            f"e.g. {EXAMPLE}"
        ) from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        what = f"the class {found.__qualname__}" if isinstance(found, type) else f"a {type(found).__name__}"
        raise SettingError(
            f"loss._target_={target}: {what}, not a torch.nn.Module class; name a loss class, e.g. {EXAMPLE}"
        )
    return found


def takes_class_weights(cls: type) -> bool:
    """Whether the constructor of `cls` names a `class_weights` parameter (a **kwargs alone does not count)."""
    try:
        return WEIGHTS in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a constructor without a signature (a C extension): takes none by name
        return False


def build_loss(node: DictConfig, class_weights: torch.Tensor) -> nn.Module:
    """The loss `node` (the `loss` group) configures, with `class_weights` if its constructor takes them (see
    the module docstring); logs when it does not."""
    cls = loss_class(node)
    if takes_class_weights(cls):
        return instantiate(node, **{WEIGHTS: class_weights})
    log.info(
        "Loss %s takes no class_weights: built as given, the data's class weights (data.class_weights) are not applied",
        node._target_,
    )
    return instantiate(node)


def describe_loss(loss: nn.Module, node: DictConfig) -> dict:
    """The loss that ran, for summary.json's provenance: its own `describe()` (poc59's losses) or its class and
    arguments, and whether the data's class weights were applied."""
    applied = takes_class_weights(type(loss))
    if callable(getattr(loss, "describe", None)):
        return {**loss.describe(), "class_weights_applied": applied}
    arguments = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    return {"class": str(node._target_), "arguments": arguments, "class_weights_applied": applied}


def check_loss(node: DictConfig, classes: ClassTable) -> None:
    """SettingError naming loss._target_ when the loss cannot be built, or cannot be called as the module calls
    it (`poc59.model.losses.probe`) on `classes`' number of classes, with all-ones class weights if it takes
    them. The keys of `node` are checked before, with the other groups' (`preflight.check_arguments`)."""
    cls = loss_class(node)
    weights = {WEIGHTS: torch.ones(classes.num_classes)} if takes_class_weights(cls) else {}
    target = node._target_
    try:
        loss = instantiate(node, **weights)
    except Exception as err:  # the constructor's refusal of a value the user gave
        raise SettingError(
            f"loss._target_={target}: cannot be built with {_given(node)}: {error_text(err.__cause__ or err)}"
        ) from None
    try:
        probe(loss, classes.num_classes, classes.ignore_index)
    except LossContractError as err:
        raise SettingError(f"loss._target_={target}: {err}{_ignore_hint(cls, node, classes.ignore_index)}") from None


def _given(node: DictConfig) -> str:
    given = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    return ", ".join(f"loss.{k}={v}" for k, v in given.items()) or "no arguments"


def _ignore_hint(cls: type, node: DictConfig, ignore_index: int) -> str:
    """The setting that makes a loss with an `ignore_index` argument leave out the unlabelled pixels."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return ""
    if "ignore_index" not in params or node.get("ignore_index") == ignore_index:
        return ""
    plus = "" if "ignore_index" in node else "+"
    return f". Pass {plus}loss.ignore_index={ignore_index} (the label of unlabelled pixels)"

"""The LightningDataModule: folder -> uint8 tensors in RAM -> whole batches -> augmented on the device.

Knows nothing of models. After `setup()` it offers what the model side needs:
`classes` (the class table), `class_weights` (for the loss), `split` and
`val_masks` (for reporting).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from poc59.core.classes import load_class_table
from poc59.core.pixels import pixel_limit
from poc59.data.augment import BatchAugment
from poc59.data.class_weights import load_or_compute
from poc59.data.decoding import canvas_side, mask_label_totals
from poc59.data.feed import BatchFeed
from poc59.data.folds import make_folds
from poc59.data.masks import (
    check_mask_remap,
    describe_remap,
    refuse_lossy_masks,
    remap_lut,
    single_class_problem,
)
from poc59.data.preload import mapped, preload
from poc59.data.sampling import ClassSites
from poc59.data.sources import DEFAULT_GROUP_PATTERN, DataError, Sample, discover_pairs
from poc59.data.split import Split, grouped_split, load_split
from poc59.data.storage import Preloaded
from poc59.data.synthetic import ensure_synthetic

log = logging.getLogger(__name__)


class SegmentationDataModule(L.LightningDataModule):
    """ARTeFACT-layout folder, preloaded once, split by source image, fed as whole batches."""

    def __init__(
        self,
        root: str | Path,
        image_size: int = 384,
        batch_size: int = 96,
        val_fraction: float = 0.2,
        seed: int = 0,
        val_aug_copies: bool = False,
        group_pattern: str = DEFAULT_GROUP_PATTERN,
        augment: dict[str, float] | None = None,
        class_weights: dict[str, Any] | None = None,
        synthetic: dict[str, int] | None = None,
        cache_dir: str | Path | None = None,
        policy: str = "resize",
        max_side: int | None = None,
        on_bad_file: str = "error",
        cache: bool = True,
        use_aug_copies: bool = True,
        test_fraction: float = 0.0,
        split_file: str | Path | None = None,
        on_device: bool = False,
        allow_large_images: bool = False,
        cv: dict[str, Any] | None = None,
        crop_sampling: dict[str, Any] | None = None,
        mask_remap: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.val_aug_copies = bool(val_aug_copies)
        self.group_pattern = group_pattern
        self.augment = BatchAugment.from_config(augment or {})
        self.class_weights_cfg = {"method": "inverse_sqrt", "cap": None, **(class_weights or {})}
        self.synthetic = dict(synthetic) if synthetic else None
        self.cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else None
        self.policy, self.max_side, self.on_bad_file = policy, max_side, on_bad_file
        canvas_side(policy, self.image_size, max_side)  # a bad geometry fails now, not after discovery
        self.cache = bool(cache)
        self.use_aug_copies = bool(use_aug_copies)
        self.test_fraction = float(test_fraction)
        self.split_file = Path(split_file).expanduser().resolve() if split_file else None
        self._given_split_file = self.split_file  # a split_file set after this is the caller's (a resumed run's)
        self.on_device = bool(on_device)
        self.allow_large_images = bool(allow_large_images)
        cv = {k: v for k, v in dict(cv or {}).items() if v is not None}
        self.cv = cv if cv.get("folds") is not None or cv.get("by") is not None else None
        self.cv_record: dict | None = None  # the fold this run validates on (see poc59.data.folds)
        self.rare_fraction = float((crop_sampling or {}).get("rare_fraction") or 0.0)
        if not 0.0 <= self.rare_fraction <= 1.0:
            raise ValueError(f"data.crop_sampling.rare_fraction={self.rare_fraction}: a share of windows, 0 to 1")
        self._sites: ClassSites | None = None
        self.mask_remap = check_mask_remap(mask_remap)  # {stored mask value: label}; see poc59.data.masks
        self.samples: list[Sample] = []
        self.unpaired: list[dict] = []  # left out before the preload under on_bad_file=skip (unpaired, lossy mask)
        self.data: Preloaded | None = None
        self._split: Split | None = None
        self.class_weights_record: dict | None = None
        self._aug_generator = torch.Generator().manual_seed(self.seed)
        self._device_data: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- preparation -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the built-in synthetic set on first use (once per node)."""
        if self.synthetic is not None:
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """Discover, check, preload, split; idempotent, so train.py may call it before `fit`."""
        if self.data is not None:
            return
        try:
            self.classes = load_class_table(self.root)
        except ValueError as err:  # ROOT/classes.json is the user's file: a data error, named
            raise DataError(str(err)) from None
        self.samples, self.unpaired = discover_pairs(self.root, self.group_pattern, self.on_bad_file)
        if not self.use_aug_copies:
            self.samples = [s for s in self.samples if not s.is_copy]
        self.samples, lossy = refuse_lossy_masks(self.samples, self.on_bad_file)
        self.unpaired += lossy
        names, ignore = self.classes.names, self.classes.ignore_index
        lut = remap_lut(self.mask_remap, self.classes.num_classes, ignore)  # a label outside the table: refused now
        if self.mask_remap:
            log.info(
                "Mask values mapped as masks are read (data.mask_remap): %s",
                describe_remap(self.mask_remap, names, ignore),
            )
        training = stage in ("fit", None)

        def refuse_single_class_early(samples: list[Sample]) -> None:
            """Before a cold decode: a few masks, and all of them only when those few look like a 0/255 export."""
            few = samples[:: max(1, len(samples) // 16)][:16]
            if single_class_problem(mask_label_totals(few, lut), names, ignore, self.root) is not None:
                problem = single_class_problem(mask_label_totals(samples, lut), names, ignore, self.root)
                if problem is not None:
                    raise DataError(problem)

        cache_dir = self.cache_dir if self.cache else None
        with pixel_limit(self.allow_large_images):  # lifted for the preload only
            self.data = preload(
                self.samples,
                self.image_size,
                self.classes.num_classes,
                ignore,
                policy=self.policy,
                max_side=self.max_side,
                on_bad_file=self.on_bad_file,
                cache_dir=cache_dir,
                mask_remap=self.mask_remap,
                before_decode=refuse_single_class_early if training else None,
            )
        self.data = mapped(self.data, cache_dir)  # after a cold decode: one copy in RAM, not two
        self.samples = self.data.samples  # without any skipped pair
        self._check_classes(training)
        if self.split_file is not None:
            self._split = load_split(
                self.split_file,
                self.samples,
                use_aug_copies=self.use_aug_copies,
                group_pattern=self.group_pattern,
                **({} if self.split_file == self._given_split_file else {"fix": self._run_split_fix()}),
            )
            self.cv_record = json.loads(self.split_file.read_text()).get("cv")  # a fold's split keeps its record
            log.info("Split read from %s", self.split_file)
        elif self.cv is not None:
            folds = make_folds(
                self.samples,
                folds=self.cv.get("folds"),
                by=self.cv.get("by"),
                root=self.root,
                min_images=self.cv.get("min_images"),
                seed=self.seed,
                test_fraction=self.test_fraction,
                presence=self.presence(),
            )
            fold = self.cv.get("fold", 0)
            self._split = folds.split(fold, self.val_aug_copies)
            self.cv_record = folds.record(fold)
            r = self.cv_record
            log.info(
                "Cross-validation: fold %d of %d%s (partition %s; images per fold %s)",
                r["fold"],
                r["folds"],
                f", holding out {r['by']}={r['value']}" if r["by"] else "",
                r["partition_fingerprint"],
                r["fold_images"],
            )
        else:
            self._split = grouped_split(
                self.samples,
                self.val_fraction,
                self.seed,
                val_aug_copies=self.val_aug_copies,
                test_fraction=self.test_fraction,
                presence=self.presence(),
            )
        self._check_labelled()
        key = f"{self.data.key}-{self.split['fingerprint']}-{self.class_weights_cfg['method']}-{self.class_weights_cfg['cap']}"
        self.class_weights_record = load_or_compute(
            self.cache_dir / f"class_weights-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
            if self.cache_dir and self.cache
            else None,
            None,
            self.classes.names,
            fingerprint=key,
            # from the preload's label counts: no pass over the training masks, in either storage layout
            counts=self.label_counts()[list(self._split.train), : self.classes.num_classes].sum(0).tolist(),
            **self.class_weights_cfg,
        )
        log.info(
            "Data %s: %d pairs, %d classes; split by source image: %d train, %d validation, %d test (seed %d)",
            self.root,
            len(self.samples),
            self.classes.num_classes,
            len(self._split.train),
            len(self._split.val),
            len(self._split.test),
            self.seed,
        )

    def _run_split_fix(self) -> str:
        """The advice when a split.json set by the caller (a resumed run's own) does not fit the data."""
        return (
            f"the run was trained on other images than {self.root} holds now: point data.root at the data it was "
            "trained on (the run's split.json is left as it is); to train on these images, start a new run "
            "(resume=never starts one in a new folder)"
        )

    def _check_classes(self, training: bool) -> None:
        """A set whose labelled pixels are all one class while the ignore label covers a share of them (a binary
        export stored as 0/255, see poc59.data.masks): a DataError when training, a warning otherwise
        (scoring a model on such images may be meant)."""
        assert self.data is not None
        totals = self.label_counts().sum(0).numpy().astype(np.int64)
        if not self.data.ragged:  # the canvas padding of policy=pad is stored as ignore: not the masks' own
            side = self.data.masks.shape[-1]
            totals[self.classes.ignore_index] -= int(len(self.samples) * side * side - self.data.sizes.prod(1).sum())
        problem = single_class_problem(totals, self.classes.names, self.classes.ignore_index, self.root)
        if problem is None:
            return
        if training:
            raise DataError(problem)
        log.warning("%s", problem)

    def _check_labelled(self) -> None:
        """DataError when the training or validation side holds no labelled pixel (every mask all ignore):
        nothing to learn from, or no validation mIoU to select a checkpoint by."""
        presence = self.presence()
        for side, name in (("train", "training"), ("val", "validation")):
            rows = list(getattr(self._split, side))
            if rows and not presence[rows].any():
                ids = ", ".join(self.samples[i].id for i in rows[:3]) + (", ..." if len(rows) > 3 else "")
                raise DataError(
                    f"{self.root}: the {name} split ({len(rows)} images: {ids}) has no labelled pixel: every pixel "
                    f"of its masks is {self.classes.ignore_index} (ignore). Masks hold class ids 0-"
                    f"{self.classes.num_classes - 1} where the object is; check ROOT/annotations"
                    + (", or move labelled images to validation (data.split_file, data.seed)" if side == "val" else "")
                )

    def presence(self) -> torch.Tensor:
        """[N, C] bool: which classes each preloaded sample contains (for stratifying the split), from
        `label_counts`."""
        assert self.data is not None, "call setup() first"
        return self.label_counts()[:, : self.classes.num_classes] > 0

    def label_counts(self) -> torch.Tensor:
        """[N, 256] int64 pixels of each label value per preloaded sample (the preload's; counted here only
        for a cache written before those were kept)."""
        assert self.data is not None, "call setup() first"
        if self.data.label_counts is None:
            self.data.label_counts = torch.stack(
                [torch.bincount(self.data.mask(i).reshape(-1), minlength=256) for i in range(len(self.data.samples))]
            )
        return self.data.label_counts

    # -- what the model side reads -----------------------------------------------------------
    @property
    def split(self) -> dict:
        """Ids per side and a fingerprint (written to split.json)."""
        assert self._split is not None, "call setup() first"
        d = self._split.to_dict(self.samples)
        return {**d, "cv": self.cv_record} if self.cv_record else d

    @property
    def class_weights(self) -> torch.Tensor:
        assert self.class_weights_record is not None, "call setup() first"
        return torch.tensor(self.class_weights_record["weights"], dtype=torch.float32)

    @property
    def val_masks(self) -> list[torch.Tensor]:
        """The validation masks' content, [h, w] each (views)."""
        assert self.data is not None and self._split is not None, "call setup() first"
        return [self.data.mask(i) for i in self._split.val]

    def describe(self) -> dict:
        """Data provenance for summary.json."""
        return {
            "root": str(self.root),
            "image_size": self.image_size,
            "batch_size_per_device": self.batch_size,
            "images": len(self.samples),
            "train_images": len(self._split.train) if self._split else None,
            "val_images": len(self._split.val) if self._split else None,
            "policy": self.policy,
            "max_side": self.max_side,
            "test_images": len(self._split.test) if self._split else None,
            "files_fingerprint": self.data.key if self.data else None,
            "split_fingerprint": self.split["fingerprint"] if self._split else None,
            "preload_seconds": round(self.data.seconds, 3) if self.data else None,
            "preload_bytes": self.data.nbytes if self.data else None,
            "preload_source": self.data.source if self.data else None,
            "skipped_files": self.unpaired + (self.data.skipped if self.data else []),
            "cv": self.cv_record,
            "augment": self.augment.to_dict(),
        }

    # -- batches -----------------------------------------------------------------------------
    def feed(
        self,
        indices: list[int] | tuple[int, ...],
        train: bool,
        batch_size: int | None = None,
        device: torch.device | None = None,
    ) -> BatchFeed:
        """The one feed of this data: training batches (shuffled random windows or whole samples) or
        validation batches (every sample, or every tile under policy=crop, once). Rank, world size, device
        and epoch come from the attached trainer; without one (evaluate) a single process on `device`."""
        assert self.data is not None, "call setup() first"
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        device = device or (trainer.strategy.root_device if trainer else torch.device("cpu"))
        images, masks = self.data.images, self.data.masks
        if self.on_device and device.type == "cuda":
            if self._device_data is None:
                self._device_data = (images.to(device), masks.to(device))
                log.info("Whole data set moved to %s (%.1f MB)", device, self.data.nbytes / 1e6)
            images, masks = self._device_data
        batch_size = batch_size or self.batch_size
        per_rank = len(indices) // world
        if train and per_rank < batch_size:
            if per_rank < 1:
                raise ValueError(f"{len(indices)} training images cannot feed {world} devices")
            log.warning(
                "data.batch_size=%d is larger than the %d training images per device; using batches of %d",
                batch_size,
                per_rank,
                per_rank,
            )
            batch_size = per_rank
        crop = self.policy == "crop"
        sites = None
        if crop and train and self.rare_fraction > 0:
            if self._sites is None:
                self._sites = ClassSites(
                    self.data.mask, self.label_counts(), indices, self.classes.num_classes, self.image_size, self.seed
                )
            sites = self._sites
        return BatchFeed(
            images,
            masks,
            indices,
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer else (lambda: 0),
            rank=rank,
            world_size=world,
            device=device,
            window=self.image_size if crop else None,
            sizes=self.data.sizes if crop else None,
            offsets=self.data.offsets,
            tiles=crop and not train,
            ignore_index=self.classes.ignore_index,
            sites=sites,
            rare_fraction=self.rare_fraction,
        )

    def train_dataloader(self) -> BatchFeed:
        return self.feed(self._split.train, train=True)

    def val_dataloader(self) -> BatchFeed:
        return self.feed(self._split.val, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            images, masks = batch
            # The batch is the feed's reused buffer (or its fresh copy on the device): augmenting it in
            # place allocates no batch-sized tensors, which on a CPU would page-fault on every batch.
            return self.augment(images, masks, self._aug_generator, inplace=True)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The augmentation RNG, so a resumed run draws what an unbroken one would."""
        return {"aug_generator": self._aug_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "aug_generator" in state_dict:
            self._aug_generator.set_state(state_dict["aug_generator"])

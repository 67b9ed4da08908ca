"""Whether two scorings of one checkpoint on two devices (a CUDA GPU and the CPU) agree as far as their
arithmetic explains, so that the first GPU to run tests/gpu finds a wrong mixed-precision path (a missing
cast, logits overflowing in fp16, normalisation in the wrong dtype, tiles stitched out of place) instead of
passing on any mIoU in [0, 1].

Two runs never agree bit for bit: CUDA runs under autocast (bf16 on GPUs with native bf16, fp16 on older
ones), and even `precision=32` convolves in TF32 on Ampere and newer (cuDNN's default). A pixel's label
changes where the two best logits are closer than that arithmetic's error, so the tolerances below are
what bf16 (the coarsest: 8 significant bits) changes, measured by emulating it on the CPU
(`torch.autocast("cpu", torch.bfloat16)`, as tests/test_parity.py does):

- LABEL_AGREEMENT = 99.5 %: the share of pixels whose predicted class is the same in both runs, pooled
  over every image. Measured (2026-12-06, this CPU) on PARITY_RUN, the tiny encoder trained on
  `write_folder`'s 128 px set (93-96 % pixel accuracy): bf16 changed 0.04-0.13 % of each image's labels
  (99.90 % agree, pooled over 4 images), almost all at block edges where two classes meet. The margin (5x)
  is for CUDA's kernels, which are not the CPU's. A model that has not learnt its set leaves near-ties
  everywhere: the same 6-epoch run on labels independent of the images agreed on 95.8 % only, which is why
  the set is learnable and the run trains to a decisive model. A wrong path disagrees on most pixels (8 px
  of misplaced tiles: see test_parity).
- MIOU_TOLERANCE = 0.01: the absolute difference of the two mIoU (0-1 scale); measured bf16 moved it by
  0.0003 (evaluate's confusion matrices agreed on 99.93 %). The flipped labels are edge pixels split
  between classes: they move mIoU by a fraction of their share.
- evaluate's per-image confusion matrices must agree as LABEL_AGREEMENT asks too (`confusion_agreement`).

The helpers are checked on two CPU runs, on emulated bf16 and on results that are not the same in
tests/test_parity.py, so a threshold that cannot fail or cannot pass is found without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

LABEL_AGREEMENT = 0.995
MIOU_TOLERANCE = 0.01

PARITY_RUN = (  # the run both sides score (with data=artefact): tests/gpu trains it on the GPU, test_parity on the CPU
    "encoder=tiny",
    "data.image_size=128",
    "data.batch_size=4",
    "trainer.max_epochs=15",
    "optimizer.lr=0.01",
)

LABELS_SUFFIX = "_labels.png"  # predict's label maps: <stem>_labels.png, one class id per pixel
PER_IMAGE = "per_image_confusion.npz"  # evaluate's per-image confusion matrices, beside metrics.json


def label_maps(folder: Path) -> dict[str, np.ndarray]:
    """predict's label maps in `folder`, by image stem."""
    return {p.name[: -len(LABELS_SUFFIX)]: np.asarray(Image.open(p)) for p in sorted(folder.glob(f"*{LABELS_SUFFIX}"))}


def label_agreement(a: Path, b: Path) -> float:
    """The share of pixels with the same class in predict's label maps of `a` and `b`, pooled over every
    image. ValueError when the folders do not hold label maps of the same images at the same sizes."""
    maps_a, maps_b = label_maps(a), label_maps(b)
    if not maps_a or set(maps_a) != set(maps_b):
        raise ValueError(f"{a} and {b} hold label maps of other images: {sorted(maps_a)} vs {sorted(maps_b)}")
    same = total = 0
    for stem, labels in maps_a.items():
        if labels.shape != maps_b[stem].shape:
            raise ValueError(f"{stem}: label maps of {labels.shape} and {maps_b[stem].shape} pixels")
        same += int((labels == maps_b[stem]).sum())
        total += labels.size
    return same / total


def metrics(folder: Path) -> dict:
    """evaluate's metrics.json in `folder`."""
    return json.loads((folder / "metrics.json").read_text())


def miou_difference(a: Path, b: Path) -> float:
    """|mIoU(a) - mIoU(b)| of two evaluate outputs (0-1 scale)."""
    return abs(metrics(a)["miou"] - metrics(b)["miou"])


def confusion_agreement(a: Path, b: Path) -> float:
    """At most the share of labelled pixels predicted alike by two evaluate outputs of the same images: 1 -
    (half the L1 distance of their per-image confusion matrices) / pixels. Each pixel whose label changed
    moves one count out of one cell and into another, so a lower value proves that many changed; it is
    evaluate's own path (the training-resolution feed), which predict's label maps do not cover."""
    with np.load(a / PER_IMAGE) as fa, np.load(b / PER_IMAGE) as fb:
        if fa["ids"].tolist() != fb["ids"].tolist():
            raise ValueError(f"{a} and {b} scored other images")
        ca, cb = fa["confusion"].astype(np.int64), fb["confusion"].astype(np.int64)
    if ca.sum(axis=2).tolist() != cb.sum(axis=2).tolist():  # rows: the targets, the same pixels in both
        raise ValueError(f"{a} and {b} scored other pixels (their targets differ)")
    return 1 - np.abs(ca - cb).sum() / 2 / max(int(ca.sum()), 1)


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """`n` image/mask pairs of `size` px in the ARTeFACT layout: 16 classes in 32 px blocks (a 255 mount along
    the top), each class painted in its own colour with noise, so that a few epochs learn them with clear
    margins between the logits (labels that depend on nothing in the image leave every pixel a near-tie,
    which any arithmetic flips)."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(16).integers(0, 256, (16, 3))  # the same colours in every set
    for sub in ("images", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.kron(rng.integers(0, 16, (size // 32, size // 32)), np.ones((32, 32), dtype=np.int64))
        image = palette[mask] + rng.normal(0, 16, (size, size, 3))
        mask[:4] = 255
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"g{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8), "L").save(root / "annotations" / f"g{i:03d}.png")
    return root

"""The built-in synthetic damage set: an ARTeFACT stand-in that nobody needs to download.

Why: ARTeFACT (418 images, Hugging Face) has to be fetched and exported before
anyone can train; the quickstart, the tests and first-time users need data that
exists offline in seconds. This package paints procedural "artworks" (gradients,
noise, strokes, figures, tiles, line drawings on ten ARTeFACT-like materials)
and draws all 15 ARTeFACT damage types on them, each with its own signature
(thin bright scratches, branching dark cracks, specks of dust, curly hairs,
blotchy stains, torn material loss showing the substrate, shaded folds,
handwriting, round stamps, textured stickers, punctures, burn marks, light
leaks, flaking peel, smudgy dirt). It writes them (`writer`) in the ARTeFACT folder
layout with `<id>_augK` copies (flip / rot90 / colour change), exactly as the
common local export looks, so the same data path serves both.

It is built to be hard in the ways ARTeFACT is hard, so a model that learns
here is not learning a toy:
- imbalance: Clean is ~80 % of labelled pixels; Material loss, Peel and
  Staining are common; Hair, Dust, Burn marks, Puncture, Scratch are thin and
  rare (well under 1 % each);
- no colour coding: damage is tinted from the local image colours (darker,
  lighter, stained versions of what is under it), so colour alone cannot
  separate classes;
- not every image has every type; every type occurs in any set of n >= 15
  originals (image i always carries type i mod 15);
- a 255 (ignore) mount around most objects (slightly rotated / inset /
  irregular frames), non-square sizes of ~300-800 px per side.

Determinism: image i comes from its own `SeedSequence(seed, spawn_key=(i,))`,
so the same (seed, i) gives byte-identical files whatever n is and however
many worker threads run.

    python -m poc59.data.synthetic out=DIR n=60 seed=0 [aug=3]
"""

from poc59.data.synthetic.artworks import AUG_KINDS, CONTENTS, MATERIALS, augment_copy, render
from poc59.data.synthetic.writer import GENERATOR_VERSION, MARKER, ensure_synthetic, generate, main

__all__ = [
    "AUG_KINDS",
    "CONTENTS",
    "GENERATOR_VERSION",
    "MARKER",
    "MATERIALS",
    "augment_copy",
    "ensure_synthetic",
    "generate",
    "main",
    "render",
]

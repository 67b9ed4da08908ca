"""Class-aware training windows (policy=crop): a share of each batch placed over a pixel of a rare class.

Uniform windows almost never hold a class that covers 0.01 % of the pixels, so a model can learn the
background alone and still lower its loss. With `rare_fraction` r, the first round(r x B) windows of
every training batch are class-aware, the rest stay uniform:

1. a class c is drawn with probability p_c proportional to f_c ** -0.5 over the classes that need
   it, f_c being its share of the training pixels (the inverse-square-root rule of the class weights:
   rarer classes more often, without letting a 1-pixel class take every window). A class needs it
   when fewer than `NEEDED_BELOW` of the uniform windows hold it: its window share q_c, the mean over
   the training images of the share of a window's top-left positions whose window holds a pixel of
   c (exact, from an integral image of each mask, once at setup). Background, and cracks that cross
   every image, are in most uniform windows already: windows moved onto them only skew the class
   balance (measured on CrackForest, see the README). When no class needs it, every window stays
   uniform;
2. a training image holding c, uniformly, and one of the pixels of c kept for it (`SITES` of them,
   picked once at setup with a seeded generator from the image's mask content, `mask(i)`; the
   preload's label counts say which images hold which class, so only those masks are searched, once,
   never per epoch);
3. the window's top-left corner so that the pixel lies at a uniform position inside the window,
   clamped into the image (a clamped window still holds the pixel).

The draws come from the feed's generator of the batch (seeded by seed, epoch, batch and rank), after
the uniform windows' own draws: a resumed run draws the same windows with no state to restore, and the
uniform items of a batch are those a run with r = 0 would draw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

SITES = 16  # pixels kept per (image, class): where its windows may be centred
NEEDED_BELOW = 0.5  # a class held by at least this share of the uniform windows gets no class-aware ones


class ClassSites:
    """Where each class lies in the training images, and how often a class-aware window goes to it."""

    def __init__(
        self,
        mask: Callable[[int], torch.Tensor],
        label_counts: torch.Tensor,
        indices: Sequence[int],
        num_classes: int,
        window: int,
        seed: int = 0,
    ) -> None:
        start = time.perf_counter()
        rng = np.random.default_rng([seed, 16])
        counts = label_counts[list(indices), :num_classes].to(torch.float64)  # [N_train, C]
        total = counts.sum(0)
        self.window_share = torch.zeros(num_classes, dtype=torch.float64)  # q_c, see the module docstring
        self.images: list[torch.Tensor] = []  # per class: the sample indices holding it
        self.sites: list[list[torch.Tensor]] = []  # per class, per such image: flat pixel positions in it
        self.width: dict[int, int] = {}  # each searched image's content width (flat position -> y, x)
        by_class: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(num_classes)]
        for row, i in enumerate(indices):
            held = torch.nonzero(counts[row] > 0).flatten().tolist()
            if not held:
                continue
            content = mask(i).numpy()
            self.width[i] = int(content.shape[-1])
            for c in held:
                here = content == c
                self.window_share[c] += window_share(here, window) / len(indices)
                where = np.flatnonzero(here)  # row-major positions, as `draw` reads them
                if where.size > SITES:
                    where = rng.choice(where, SITES, replace=False)
                by_class[c].append((i, where.astype(np.int64)))
        for c in range(num_classes):
            self.images.append(torch.tensor([i for i, _ in by_class[c]], dtype=torch.int64))
            self.sites.append([torch.from_numpy(w) for _, w in by_class[c]])
        needed = (total > 0) & (self.window_share < NEEDED_BELOW)
        weight = torch.zeros(num_classes, dtype=torch.float64)
        weight[needed] = (total[needed] / total.sum()).pow(-0.5)
        self.needed = bool(needed.any())  # False: every class is in most uniform windows, all stay uniform
        self.probabilities = weight / weight.sum() if self.needed else weight  # p_c, see the module docstring
        shares = ", ".join(f"{c}: {q:.1%}" for c, q in enumerate(self.window_share.tolist()) if total[c] > 0)
        log.info(
            "Class-aware windows: %d training images searched once in %.2f s; share of uniform %d px windows "
            "holding each class %s",
            len(indices),
            time.perf_counter() - start,
            window,
            shares,
        )
        if self.needed:
            log.info(
                "Class-aware windows go to the classes under %.0f %% of them, with probabilities %s",
                100 * NEEDED_BELOW,
                ", ".join(f"{c}: {p:.3f}" for c, p in enumerate(self.probabilities.tolist()) if p > 0),
            )
        else:
            log.info(
                "Every class is in at least %.0f %% of the uniform windows: all training windows stay uniform",
                100 * NEEDED_BELOW,
            )

    def draw(self, n: int, generator: torch.Generator, window: int, sizes: torch.Tensor) -> torch.Tensor:
        """n (sample, y, x) windows of side `window`, each holding a pixel of its drawn class."""
        classes = torch.multinomial(self.probabilities, n, replacement=True, generator=generator)
        u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
        out = torch.empty((n, 3), dtype=torch.int64)
        for k, c in enumerate(classes.tolist()):
            j = min(int(u[k, 0] * len(self.images[c])), len(self.images[c]) - 1)
            i = int(self.images[c][j])
            here = self.sites[c][j]
            pos = int(here[min(int(u[k, 1] * len(here)), len(here) - 1)])
            py, px = divmod(pos, self.width[i])
            h, w = sizes[i].tolist()
            y = min(max(py - int(u[k, 2] * window), 0), max(h - window, 0))
            x = min(max(px - int(u[k, 3] * window), 0), max(w - window, 0))
            out[k] = torch.tensor((i, y, x))
        return out


def window_share(here: np.ndarray, window: int) -> float:
    """The share of a uniform window's top-left positions (as the feed draws them) whose window holds a
    True pixel of `here` [H, W]; a side shorter than the window has one position, the window covering it.

    Exact and O(H x W): the True count of every window from an integral image."""
    h, w = here.shape
    wy, wx = min(window, h), min(window, w)
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    np.cumsum(np.cumsum(here, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    inside = integral[wy:, wx:] - integral[:-wy, wx:] - integral[wy:, :-wx] + integral[:-wy, :-wx]
    return float((inside > 0).mean())

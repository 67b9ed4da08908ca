"""Training-step overhead: images/s of poc59's SegmentationModule through Lightning's `Trainer.fit`, vs a plain
PyTorch loop doing the same work.

Both sides are built from the real composed config by the same function (bench/composed.py), so they share
the network (`encoder=tiny`, from scratch, the same seeded initial weights), the loss (DiceFocal with the
training split's class weights), AdamW + OneCycle stepped every step, gradient clipping
(`trainer.gradient_clip_val`), the precision (32-bit: CPU) and the batches: the DataModule's own feed and
on-device augmentation (flips/rot90, the same seeded draws on both sides). Proof that they do the same work:
after the first pair of runs both sides' weights are compared (`max_weight_difference`, 0 when identical).

- Lightning: a `Trainer` from `cfg.trainer` with the config's callbacks and loggers as a user has them (Rich
  progress bar, CSV + TensorBoard loggers, learning-rate monitor, the throughput callback; the loss logged
  every step to the bar and every `log_every_n_steps` to the loggers; the training IoU metric updated),
  training steps only: validation, checkpointing, sanity checks and the model summary off. The Rich bar
  renders as in a terminal (`force_terminal`) into a null sink, so its cost counts wherever this runs.
- Plain: for each feed batch: augment, forward, loss, metric update, zero_grad, backward, clip, AdamW step,
  OneCycle step. No logging, no progress display.

Images/s are timed from the end of the first `warmup` steps to the end of the last one, by the same clock on
both sides (a callback on Lightning's side, a call in the loop on the other). Runs alternate L P, P L, L P ...;
the ratio judged is the median of the pairs' ratios (Lightning / plain).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import rich
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig

from bench import common
from bench.composed import segmentation_module, train_config
from poc59.data.datamodule import SegmentationDataModule
from poc59.model.module import SegmentationModule
from poc59.training.run import instantiate_all

NAME = "train_step"
BAR = 0.95  # Lightning images/s over the plain loop's, median of the interleaved pairs
# One intra-op thread on both sides: with two on this shared 2-core machine a step's time swings 10-100x with
# the other work (measured at load average 5.7: 0.15 s a step with one thread, 2-18 s with two), which would
# drown the overhead measured here. Lightning's own work runs on the Python thread either way.
THREADS = 1


@dataclass(frozen=True)
class Sizes:
    pairs: int  # files in the generated set (common.data_set)
    image_size: int
    batch_size: int
    steps: int  # training steps per run
    warmup: int  # first steps of each run left out of the timing
    repeats: int  # interleaved (Lightning, plain) pairs


# 13 steps: the 10 timed ones include one logging step (log_every_n_steps=10), as in a real run.
FULL = Sizes(pairs=1458, image_size=128, batch_size=8, steps=13, warmup=3, repeats=10)
# The quick data set (shared with the data benchmarks) has 3 training batches of 8: all 3 run, 2 timed.
QUICK = Sizes(pairs=common.QUICK.pairs, image_size=64, batch_size=8, steps=3, warmup=1, repeats=1)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def config(root: Path, s: Sizes, run_dir: Path, *extra: str) -> DictConfig:
    """The real composed config for `s.steps` training steps on the folder `root`, nothing but training."""
    return train_config(
        "encoder=tiny",
        "data=artefact",
        f"data.root={root}",
        f"data.image_size={s.image_size}",
        f"data.batch_size={s.batch_size}",
        f"data.cache_dir={common.warm_cache_dir()}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={s.steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "+trainer.enable_checkpointing=false",
        # the bar renders as in a terminal wherever this runs (into a null sink: see quiet_fit)
        "+callbacks.progress_bar.console_kwargs={force_terminal: true, width: 120}",
        "trainer.enable_model_summary=false",  # a table printed once at fit start, outside the timed steps
        *extra,
        run_dir=run_dir,
    )


def build(cfg: DictConfig) -> tuple[SegmentationDataModule, SegmentationModule]:
    """DataModule (set up) and LightningModule from the config, seeded: the same weights and batches each call."""
    L.seed_everything(cfg.seed, verbose=False)
    dm: SegmentationDataModule = instantiate(cfg.data)
    dm.setup("fit")
    return dm, segmentation_module(cfg, dm.classes, dm.class_weights)


class StepClock(L.Callback):
    """Wall and CPU time at the end of every training step (Lightning calls it; the plain loop calls `tick`)."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.cpu: list[float] = []  # this process's CPU time, all threads (the Rich bar's and the loggers' too)
        self.images: list[int] = []

    def tick(self, images: int) -> None:
        self.ticks.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.images.append(images)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.tick(batch[0].shape[0])

    def _check(self, warmup: int) -> None:
        if len(self.ticks) <= warmup:
            raise RuntimeError(f"only {len(self.ticks)} steps ran, {warmup} are warm-up")

    def images_per_second(self, warmup: int) -> float:
        """Images of steps warmup+1 .. last over the wall time from the end of step `warmup` to the end of the last."""
        self._check(warmup)
        return sum(self.images[warmup:]) / (self.ticks[-1] - self.ticks[warmup - 1])

    def cpu_ms_per_step(self, warmup: int) -> float:
        """CPU time per step over the same steps (a diagnostic: other work on the machine moves it less than wall time)."""
        self._check(warmup)
        return 1e3 * (self.cpu[-1] - self.cpu[warmup - 1]) / (len(self.cpu) - warmup)


@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """Stdout into a null sink (where the Rich bar renders, as in a terminal) and Lightning's per-fit INFO lines
    muted; afterwards Rich's global console, which the bar replaced, is the default one again."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        rich.reconfigure()


def lightning_fit(cfg: DictConfig, clock: StepClock) -> SegmentationModule:
    """`Trainer.fit` with the config's callbacks and loggers, and `clock` last."""
    dm, module = build(cfg)
    callbacks = instantiate_all(cfg.callbacks)
    if not any(isinstance(c, RichProgressBar) for c in callbacks):
        raise RuntimeError("the config has no Rich progress bar: this benchmark measures training as a user has it")
    with quiet_fit():
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, clock], logger=instantiate_all(cfg.logger))
        trainer.fit(module, datamodule=dm)
    return module


def plain_loop(cfg: DictConfig, clock: StepClock, steps: int) -> SegmentationModule:
    """The same objects, batches and updates without Lightning: what the Trainer's overhead is measured against."""
    dm, module = build(cfg)
    dm.trainer = common.TrainerStub()  # in training, one CPU process: the feed and augmentation Lightning drives
    optimizer = module.optimizer_factory(params=module.parameters())
    scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=steps)
    clip = cfg.trainer.gradient_clip_val
    module.train()
    for _, batch in zip(range(steps), dm.train_dataloader()):
        images, masks = dm.on_after_batch_transfer(batch, 0)
        target = masks.long()
        logits = module(images)
        loss = module.loss(logits, target)
        module.train_iou.update(logits.detach().argmax(dim=1), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        scheduler.step()
        clock.tick(images.shape[0])
    return module


def max_weight_difference(a: SegmentationModule, b: SegmentationModule) -> float:
    """Largest absolute difference between two modules' weights: 0 when both runs did the same arithmetic."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


Side = Callable[[StepClock, int], SegmentationModule]


def interleave(sides: dict[str, Side], s: Sizes) -> tuple[dict[str, list[float]], dict[str, list[float]], float]:
    """Each side `s.repeats` times, in the order A B, B A, A B ... (a steady drift in the load favours neither).

    Returns images/s and CPU ms per step of every run, by side, and the two sides' weight difference after
    the first pair.
    """
    names = list(sides)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    trained: dict[str, SegmentationModule] = {}
    difference = float("nan")
    for i in range(s.repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            gc.collect()  # the last run's garbage is collected now, not in this run's timed steps
            clock = StepClock()
            trained[name] = sides[name](clock, i)
            if len(clock.ticks) != s.steps:
                raise RuntimeError(f"{name} ran {len(clock.ticks)} steps, not {s.steps}")
            rates[name].append(clock.images_per_second(s.warmup))
            cpu[name].append(clock.cpu_ms_per_step(s.warmup))
        if i == 0:
            difference = max_weight_difference(*(trained[n] for n in names))
        trained.clear()
    return rates, cpu, difference


def run(quick: bool) -> list[dict]:
    s = sizes(quick)
    root = common.data_set(s.pairs)
    torch.set_flush_denormal(True)  # as poc59.train sets it (denormals slow CPU training 3-10x)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    scratch = common.scratch_dir("train-step-")
    try:
        cfg = config(root, s, scratch / "plain")
        build(cfg)  # fills the preload cache at this size if it is the first use: not timed
        sides: dict[str, Side] = {
            "lightning": lambda clock, i: lightning_fit(config(root, s, scratch / f"lightning{i}"), clock),
            "plain": lambda clock, i: plain_loop(cfg, clock, s.steps),
        }
        before = common.load()
        with common.Stopwatch() as sw:
            runs, cpu, difference = interleave(sides, s)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = [a / b for a, b in zip(runs["lightning"], runs["plain"])]
    ratio = common.median(ratios)
    return [
        common.row(
            NAME,
            f"Lightning Trainer.fit as a user has it (Rich bar, CSV + TensorBoard, lr monitor, throughput, train "
            f"IoU), training steps: tiny encoder, {s.image_size} px, batch {s.batch_size}, CPU 32-bit, {THREADS} thread",
            common.median(runs["lightning"]),
            "img/s",
            common.median(runs["plain"]),
            "plain PyTorch loop: same module, loss, AdamW + OneCycle, clipping, batches",
            ratio,
            "x",
            f">= {BAR:g}x (median of {s.repeats} interleaved pairs)",
            ratio >= BAR,
            quick,
            {
                "runs_img_per_s": runs,
                "pair_ratios": [round(r, 4) for r in ratios],
                "cpu_ms_per_step": cpu,  # all threads of this process, over the same steps as the images/s
                "cpu_ratio": round(common.median([p / q for q, p in zip(cpu["lightning"], cpu["plain"])]), 4),
                "max_weight_difference": difference,  # 0: both sides computed the same weights (first pair)
                "steps_per_run": s.steps,
                "warmup_steps_excluded": s.warmup,
                "precision": str(cfg.trainer.precision),
                "log_every_n_steps": cfg.trainer.log_every_n_steps,
                "augmentation": "on in both: the DataModule's flips/rot90, the same seeded draws",
                "progress_bar": "RichProgressBar rendering as in a terminal (force_terminal) into a null sink",
                "cores_used": round(sw.cores, 2),
                "torch_threads": THREADS,
                "load_before": before,
                "load_after": common.load(),
            },
        )
    ]

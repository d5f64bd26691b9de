"""The training run both tasks share: set-up order, the epoch loop, the batch loop, best-then-last saving, the end.

A task trainer (detection's DistillTrainer, the classification trainers) subclasses Trainer and fills
in what differs -- how its options resume, how it builds models and data, what a batch becomes
(preprocess_batch), what a step computes (training_step) and how it steps (backward_and_step), the
names of its loss items, validation and its fitness, what a checkpoint holds, how a run ends -- while
everything that must behave the same in both lives here once: the run folder, the device and process
group, the batch loop (the sampler's epoch, the progress bar, the all-rank finite-loss check, the running
means of the loss items), the out-of-memory message, the order of the checkpoint writes, the run logger
and opt.yaml, the compression set-up with its calibration, and torchrun's rules (rank 0 validates, logs
and saves; every rank stops together). The shape is ultralytics' BaseTrainer._do_train.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import yaml
from torch import nn
from tqdm import tqdm

from .. import distributed as ddp
from ..checkpoint import find_last_checkpoint
from ..errors import UserError
from ..paths import increment_dir
from ..run_logger import RunLogger
from .setup import select_device

LOGGER = logging.getLogger("yolodistill")


class TrainingError(UserError):
    """Training cannot go on (the loss stays NaN, the GPU ran out of memory); reported on one line."""


class Trainer:
    """One training run. `run()`: setup() -> the epochs -> finish(), with the group left and hooks removed
    however it ends. Subclasses set `kind` and implement the methods that raise NotImplementedError."""

    ready = False  # set by setup(): build() ran

    kind = ""  # the command that trains this way (checked on --resume)
    # The loss items training_step() returns, in this order: their running means make the progress bar and
    # the train/<name> columns of results.csv.
    loss_names: Sequence[str] = ()

    def __init__(self, options: Any):
        self.options = options
        # Under torchrun: one process per device, --batch-size split over them; rank 0 validates, logs, saves.
        self.dist = ddp.context_from_env()
        self.main = self.dist.is_main
        if not self.main:  # one log, rank 0's
            LOGGER.setLevel(logging.WARNING)
        self.resume_ckpt: Optional[dict] = None
        if options.resume:
            self.resume_ckpt = self.load_resume_state(find_last_checkpoint(options.resume, options.project))
        self.batch_size = ddp.per_rank_batch(self.options.batch_size, self.dist)
        self.device = (ddp.setup(self.dist, self.options.device) if self.dist.enabled
                       else select_device(self.options.device))
        self.start_epoch = 0
        self.epoch = 0  # the epoch being trained
        self.best_fitness = -math.inf
        self.run_logger: Optional[RunLogger] = None
        self.epoch_seconds: list[float] = []

    # ---- what a task defines ----------------------------------------------------------------------
    def load_resume_state(self, last: Path) -> dict:
        """--resume: replace self.options with the options saved in `last` and return the checkpoint, whose
        training state restore() puts back once everything is built."""
        raise NotImplementedError

    def build(self) -> None:
        """Data, models, optimizer, the run folder (make_run_dir), resumed state, the log (open_run_logger)."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Before an epoch's first batch, on every rank: train mode, the epoch's own streams and counters."""

    def begin_batch(self, iteration: int) -> None:
        """Before a batch is preprocessed, on every rank (a warm-up's learning rates). `iteration`: batches since
        the run began."""

    def preprocess_batch(self, batch: Any, iteration: int) -> Any:
        """A loader batch made ready for training_step() (onto the device, images beside it)."""
        return batch

    def training_step(self, batch: Any, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass of a preprocessed batch: the loss to back-propagate, and its detached items (1-D, one
        per loss_names)."""
        raise NotImplementedError

    def backward_and_step(self, loss: torch.Tensor, iteration: int) -> bool:
        """Backward of a finite loss and, when one is due, the optimizer step; False: the step was skipped, and
        its batch is left out of the running means."""
        raise NotImplementedError

    def non_finite_loss(self, loss: torch.Tensor, iteration: int) -> None:
        """The loss is NaN/inf on some rank, and every rank is here together: by default the run stops."""
        raise TrainingError(f"loss became non-finite at epoch {self.epoch + 1}: lower --lr0")

    def after_batch(self, batch: Any, iteration: int) -> None:
        """After a batch's step, on every rank (yolov5's plots of the first batches)."""

    def progress_bar(self, epoch: int) -> tqdm:
        """The epoch's batches behind a progress bar, drawn on rank 0."""
        return tqdm(self.train_loader, desc=f"{epoch + 1}/{self.options.epochs}", unit="batch", leave=False,
                    bar_format="{l_bar}{bar:10}{r_bar}", disable=not self.main)

    def show_progress(self, bar: tqdm, epoch: int, batch: Any, mean_losses: torch.Tensor) -> None:
        """The running means on the progress bar, after each batch."""
        bar.set_postfix({n: f"{m:.4f}" for n, m in zip(self.loss_names, mean_losses.tolist())})

    def epoch_row(self, epoch: int, mean_losses: torch.Tensor) -> dict[str, float]:
        """The logged training values of an epoch: train/<name> of the running means (and what the task adds)."""
        return {f"train/{n}": float(m) for n, m in zip(self.loss_names, mean_losses)}

    def end_epoch(self, epoch: int) -> None:
        """After an epoch's training, on every rank (e.g. an epoch-wise LR schedule)."""

    def validate(self, epoch: int) -> dict[str, float]:
        """Rank 0's validation of the model as it will be saved; returns the metric columns."""
        raise NotImplementedError

    def fitness(self, metrics: dict[str, float]) -> float:
        raise NotImplementedError

    def is_improvement(self, fitness: float) -> bool:
        """Whether this epoch's model replaces best.pt (yolov5: a tie replaces it too)."""
        return fitness >= self.best_fitness

    def should_stop(self, epoch: int, fitness: float) -> bool:
        """Early stopping, decided on rank 0 and broadcast."""
        return False

    def wants_checkpoint(self, epoch: int, stop: bool) -> bool:
        """Whether this epoch writes best.pt/last.pt (yolov5's --nosave keeps only the final one)."""
        return True

    def save(self, path: Path, epoch: int, *, training_state: bool) -> None:
        """Write one checkpoint atomically; `training_state`: with what --resume needs."""
        raise NotImplementedError

    def saved_models(self) -> list[nn.Module]:
        """The models whose weights save() writes: checked to be finite before they overwrite last.pt."""
        raise NotImplementedError

    def after_save(self, epoch: int) -> None:
        """Extra files after an epoch's checkpoints (yolov5's --save-period)."""

    def report_epoch(self, epoch: int, row: dict[str, float]) -> None:
        """A log line after an epoch, if the task has no progress output of its own."""

    def finish(self) -> dict:
        """Rank 0, after the last epoch: final files and metrics; returns run()'s result."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove hooks and masks, however the run ended."""

    # ---- shared pieces the set-up calls ---------------------------------------------------------------
    def make_run_dir(self, resumed: Optional[Path] = None) -> Path:
        """The run folder: a resumed run's own, or project/name numbered by rank 0 alone (ranks racing to
        number exp, exp2, ... would disagree) and handed to the others."""
        options = self.options
        if resumed is not None:
            save_dir = Path(resumed)
        else:
            save_dir = Path(ddp.broadcast(str(increment_dir(Path(options.project) / options.name, options.exist_ok))
                                          if self.main else None, self.dist))
        self.save_dir = save_dir
        self.weights_dir = save_dir / "weights"
        if self.main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.weights_dir / "last.pt", self.weights_dir / "best.pt"
        return save_dir

    def open_run_logger(self, columns: Sequence[str], saved_options: Optional[dict] = None) -> None:
        """results.csv (rows past the resumed epoch dropped: they are trained again) and opt.yaml (the options,
        or `saved_options` as the task writes them), on rank 0."""
        if not self.main:
            return
        self.run_logger = RunLogger(self.save_dir, columns)
        self.run_logger.truncate_after(self.start_epoch - 1)
        with open(self.save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(asdict(self.options) if saved_options is None else saved_options, f, sort_keys=False)

    def setup_compression(self, model: nn.Module, batches: Iterable, images: Callable[[Any], torch.Tensor],
                          *, forward: Optional[nn.Module] = None, quant_state: Optional[dict] = None):
        """--qat / --sparsity on `model`, calibrated on the first --qat-calib-images training images
        (`images` turns a loader batch into the model's input); returns the Compression, which is a no-op
        when neither is asked for."""
        from ..compress import Compression

        options = self.options
        compression = Compression(options.qat, options.sparsity)
        if compression.enabled:
            n_batches = max(1, math.ceil(options.qat_calib_images / options.batch_size))
            calibration = (images(b) for b, _ in zip(batches, range(n_batches)))
            compression.prepare(model, calibration=calibration, forward=forward or model, quant_state=quant_state)
        return compression

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: a step skipped (or a run stopped) on one rank must be on
        all, or the others would wait forever in DDP's gradient all-reduce."""
        finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    # ---- the batch loop -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch on every rank: each batch through begin_batch(), preprocess_batch(), training_step(), the
        finite-loss check and backward_and_step(); returns epoch_row() of the loss items' running means."""
        self.epoch = epoch
        self.begin_epoch(epoch)
        if self.dist.enabled:
            self.train_loader.sampler.set_epoch(epoch)  # a different shard order every epoch
        batches = len(self.train_loader)
        bar = self.progress_bar(epoch)
        mean_losses: Optional[torch.Tensor] = None
        for i, batch in enumerate(bar):
            iteration = i + batches * epoch
            self.begin_batch(iteration)
            batch = self.preprocess_batch(batch, iteration)
            items = self.train_batch(batch, iteration)
            self.after_batch(batch, iteration)
            if items is not None:
                # yolov5's running mean: a skipped batch counts as one at the mean so far (or at 0, before any)
                start = torch.zeros_like(items) if mean_losses is None else mean_losses
                mean_losses = (start * i + items) / (i + 1)
            self.show_progress(bar, epoch, batch, self._or_zeros(mean_losses))
        return self.epoch_row(epoch, self._or_zeros(mean_losses))

    def train_batch(self, batch: Any, iteration: int) -> Optional[torch.Tensor]:
        """One preprocessed batch: the step, unless its loss is NaN/inf on any rank (then every rank hands it to
        non_finite_loss() together); the loss items, or None for a skipped step."""
        loss, items = self.training_step(batch, iteration)
        if not self.all_finite(loss):
            self.non_finite_loss(loss, iteration)
            return None
        return items if self.backward_and_step(loss, iteration) else None

    def _or_zeros(self, mean_losses: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(len(self.loss_names)) if mean_losses is None else mean_losses

    # ---- the run ----------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Everything up to the first epoch (once; run() calls it unless it ran already)."""
        if not self.ready:
            self.build()
            self.ready = True
        return self

    def run(self) -> dict:
        """Train; returns finish()'s result on rank 0 (the run folder and the final metrics)."""
        finished = False
        try:
            try:
                self.setup()
                result = self.fit()
                finished = True
                return result
            finally:
                self.cleanup()
                if self.run_logger is not None:
                    self.run_logger.close()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(ddp.oom_message(self.options.batch_size, self.dist)) from None
        finally:
            ddp.leave(self.dist, finished=finished)

    def fit(self) -> dict:
        epochs = self.options.epochs
        t0 = time.time()
        epoch = self.start_epoch
        for epoch in range(self.start_epoch, epochs):
            t_epoch = time.perf_counter()
            row = self.train_epoch(epoch)
            self.epoch_seconds.append(time.perf_counter() - t_epoch)
            self.end_epoch(epoch)
            stop = False
            if self.main:
                metrics = self.epoch_metrics = self.validate(epoch)
                fitness = self.fitness(metrics)
                improved = self.is_improvement(fitness)
                stop = self.should_stop(epoch, fitness)
                if improved:
                    self.best_fitness, self.best_metrics = fitness, dict(metrics)
                row = {**row, **metrics}
                self.run_logger.log(epoch, row)
                if self.wants_checkpoint(epoch, stop):
                    self.save_epoch(epoch, improved)
                self.report_epoch(epoch, row)
            if ddp.broadcast(stop, self.dist):  # every rank stops together, on rank 0's early stopping
                break
        LOGGER.info(f"{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        if not self.main:
            return {"save_dir": str(self.save_dir), "rank": self.dist.rank, "epoch_seconds": self.epoch_seconds}
        return self.finish()

    def save_epoch(self, epoch: int, improved: bool) -> None:
        # NaN or inf weights are a lost run: writing them would lose the last good last.pt too
        if not all(torch.isfinite(t).all() for m in self.saved_models() for t in (*m.parameters(), *m.buffers())
                   if t.is_floating_point()):
            raise TrainingError(f"the weights became NaN/inf in epoch {epoch} and were not saved: {self.last} "
                                f"holds the last finite epoch, if any. Lower the learning rate or the distillation "
                                f"weights, or check the data")
        # best.pt first: once last.pt records an epoch (and the best fitness it reached), best.pt holds it too,
        # so a run killed between the two writes resumes without losing its best model.
        if improved:
            self.save(self.best, epoch, training_state=False)
        self.save(self.last, epoch, training_state=True)
        self.after_save(epoch)

"""The training run both tasks share: set-up order, the epoch loop, best-then-last saving, the end.

A task trainer (detection's DistillTrainer, the classification trainers) subclasses Trainer and fills
in what differs -- how its options resume, how it builds models and data, one epoch of training,
validation and its fitness, what a checkpoint holds, how a run ends -- while everything that must
behave the same in both lives here once: the run folder, the device and process group, the
all-rank finite-loss check, the out-of-memory message, the order of the checkpoint writes, the
run logger and opt.yaml, the compression set-up with its calibration, and torchrun's rules (rank 0
validates, logs and saves; every rank stops together).
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

from .. import distributed as ddp
from ..checkpoint import find_last_checkpoint
from ..errors import UserError
from ..run_logger import RunLogger
from .setup import increment_dir, select_device

LOGGER = logging.getLogger("yolodistill")


class TrainingError(UserError):
    """Training cannot go on (the loss stays NaN, the GPU ran out of memory); reported on one line."""


class Trainer:
    """One training run. `run()`: setup() -> the epochs -> finish(), with the group left and hooks removed
    however it ends. Subclasses set `kind` and implement the methods that raise NotImplementedError."""

    ready = False  # set by setup(): build() ran

    kind = ""  # the command that trains this way (checked on --resume)

    def __init__(self, opts: Any):
        self.opts = opts
        # Under torchrun: one process per device, --batch-size split over them; rank 0 validates, logs, saves.
        self.dist = ddp.context_from_env()
        self.main = self.dist.is_main
        if not self.main:  # one log, rank 0's
            LOGGER.setLevel(logging.WARNING)
        self.resume_ckpt: Optional[dict] = None
        if opts.resume:
            self.resume_ckpt = self.load_resume_state(find_last_checkpoint(opts.resume, opts.project))
        self.batch_size = ddp.per_rank_batch(self.opts.batch_size, self.dist)
        self.device = ddp.setup(self.dist, self.opts.device) if self.dist.enabled else select_device(self.opts.device)
        self.start_epoch = 0
        self.best_fitness = -math.inf
        self.run_logger: Optional[RunLogger] = None
        self.epoch_seconds: list[float] = []

    # ---- what a task defines ----------------------------------------------------------------------
    def load_resume_state(self, last: Path) -> dict:
        """--resume: replace self.opts with the options saved in `last` and return the checkpoint, whose
        training state restore() puts back once everything is built."""
        raise NotImplementedError

    def build(self) -> None:
        """Data, models, optimizer, the run folder (make_run_dir), resumed state, the log (open_run_logger)."""
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch on every rank; returns the logged training values (train/* and the learning rates)."""
        raise NotImplementedError

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
        o = self.opts
        if resumed is not None:
            save_dir = Path(resumed)
        else:
            save_dir = Path(ddp.broadcast(str(increment_dir(Path(o.project) / o.name, o.exist_ok))
                                          if self.main else None, self.dist))
        self.save_dir = save_dir
        self.weights_dir = save_dir / "weights"
        if self.main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.weights_dir / "last.pt", self.weights_dir / "best.pt"
        return save_dir

    def open_run_logger(self, columns: Sequence[str], options: Optional[dict] = None) -> None:
        """results.csv (rows past the resumed epoch dropped: they are trained again) and opt.yaml, on rank 0."""
        if not self.main:
            return
        self.run_logger = RunLogger(self.save_dir, columns)
        self.run_logger.truncate_after(self.start_epoch - 1)
        with open(self.save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(asdict(self.opts) if options is None else options, f, sort_keys=False)

    def setup_compression(self, model: nn.Module, batches: Iterable, images: Callable[[Any], torch.Tensor],
                          *, forward: Optional[nn.Module] = None, quant_state: Optional[dict] = None):
        """--qat / --sparsity on `model`, calibrated on the first --qat-calib-images training images
        (`images` turns a loader batch into the model's input); returns the Compression, which is a no-op
        when neither is asked for."""
        from ..compress import Compression

        o = self.opts
        compression = Compression(o.qat, o.sparsity)
        if compression.enabled:
            n_batches = max(1, math.ceil(o.qat_calib_images / o.batch_size))
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
            raise TrainingError(ddp.oom_message(self.opts.batch_size, self.dist)) from None
        finally:
            ddp.leave(self.dist, finished=finished)

    def fit(self) -> dict:
        epochs = self.opts.epochs
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

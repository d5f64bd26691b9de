"""The detection trainer: yolov5's own parts, composed into small steps, plus distillation terms.

Same recipe as yolov5's train.py (mosaic dataloader, ComputeLoss, ModelEMA, smart_optimizer, warmup,
linear/cosine LR, accumulation to a nominal batch of 64, AMP on CUDA, EarlyStopping, val mAP per
epoch, best.pt/last.pt, results.csv) but every loss term is a named column, and the student that
is saved is a plain YOLOv5 model: adapters live only in last.pt's 'distill' entry, for --resume.
run_setup.py builds the run; the shared Trainer (yolodistill.training) runs its epochs and batches,
and this module says what a batch is, what a step computes, how it is validated and saved.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import __version__
from .. import distributed as ddp
from .. import yolo_backend as yb
from ..checkpoint import save_checkpoint_atomic
from ..errors import UserError
from ..run_logger import METRIC_COLUMNS, plot_results
from ..runtime import load_detector
from ..training import TrainingError
from .distillation import TASK_TERMS
from .run_setup import DetectionRunSetup
from .train_options import TrainOptions

LOGGER = logging.getLogger("yolodistill")
MAX_BAD_STEPS = 10  # consecutive non-finite losses before training stops
__all__ = ["DistillTrainer", "TrainOptions", "TrainingBatch", "TrainingError", "train"]


class TrainingBatch(NamedTuple):
    """A batch as training_step() takes it."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1] on the device: the labeled images first, then unlabeled ones
    targets: Optional[torch.Tensor]  # (N, 6: image, class, x, y, w, h) of the first n_labeled; None: no labels
    paths: Optional[tuple] = None  # the labeled images' files (for the train_batch plots)
    n_labeled: Optional[int] = None  # images the targets label, the first ones; None: all


class DistillTrainer(DetectionRunSetup):
    """One training run; `run()` goes through setup, epochs and the final strip/validate."""

    def fit(self) -> dict:
        LOGGER.info(f"Image sizes {self.imgsz} train, {self.imgsz} val; {self.train_loader.num_workers} dataloader "
                    f"workers; logging results to {self.save_dir}; training for {self.options.epochs} epochs...")
        if self.distiller:
            self.distiller.attach()
        return super().fit()

    # ------------------------------------------------------------------ the batches
    def begin_epoch(self, epoch: int) -> None:
        self.trainable.train()  # the teacher is not in here; FrozenTeacher.train() is a no-op anyway
        if self.options.image_weights:
            yb.reweight_images(self.dataset, self.student, self.maps, self.num_classes)
        self.unlabeled_stream = self.unlabeled.stream(epoch) if self.unlabeled else None
        self.pseudo_labeling = self.unlabeled_stream is not None and self.options.pseudo_labels > 0
        # labeled + unlabeled images taken so far this epoch
        self.seen = {"labeled": 0, "unlabeled": 0, **({"pseudo_boxes": 0} if self.pseudo_labeling else {})}
        self.optimizer.zero_grad()

    def begin_batch(self, iteration: int) -> None:
        """yolov5's warm-up: learning rates, momentum and accumulation ramp up over the first iterations."""
        if iteration <= self.warmup_iterations:
            self.accumulate = yb.warm_up(self.optimizer, iteration, self.warmup_iterations, self.hyp,
                                         self.lr_lambda(self.epoch), self.options.nbs / self.options.batch_size)

    def progress_bar(self, epoch: int) -> tqdm:
        """yolov5's columns: epoch, GPU memory, the losses, instances, image size (and the images taken)."""
        shorts = [n.replace("distill/", "d_") for n in self.loss_names]
        seen = ["Images"] if self.unlabeled else []
        LOGGER.info(("\n" + "%11s" * (4 + len(shorts) + len(seen))) % ("Epoch", "GPU_mem", *shorts, "Instances",
                                                                         "Size", *seen))
        return tqdm(self.train_loader, bar_format=yb.TQDM_BAR_FORMAT, disable=not self.main)

    def preprocess_batch(self, batch: tuple, iteration: int) -> TrainingBatch:
        """The loader's uint8 images beside the epoch's share of unlabeled ones, on the device in [0, 1]; with
        --pseudo-labels the teacher's boxes label the unlabeled ones; --multi-scale rescales them all."""
        images, targets, paths, _ = batch
        n_labeled = images.shape[0]
        if self.unlabeled_stream is not None:  # after the labeled images: the task loss takes the first n_labeled
            images = torch.cat([images, next(self.unlabeled_stream)[:self.unlabeled.share(n_labeled)]])
        self.seen["labeled"] += n_labeled
        self.seen["unlabeled"] += images.shape[0] - n_labeled
        images = images.to(self.device, non_blocking=True).float() / 255
        targets = targets.to(self.device)
        if self.pseudo_labeling:  # the teacher labels the unlabeled images: the task loss takes all
            boxes = self.teacher.pseudo_labels(images[n_labeled:], conf_thres=self.options.pseudo_labels,
                                               first_index=n_labeled)
            if self.pseudo_classes_to_one:
                boxes[:, 1] = 0
            targets, n_labeled = torch.cat([targets, boxes]), images.shape[0]
            self.seen["pseudo_boxes"] += len(boxes)
        if self.options.multi_scale:
            images = yb.random_rescale(images, self.imgsz, self.max_stride)
        return TrainingBatch(images, targets, paths, n_labeled)

    def training_step(self, batch: TrainingBatch, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and total_loss(); a batch without targets gets only the distillation terms."""
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            pred, terms = (self.forward_model(batch.images) if self.distiller
                           else (self.forward_model(batch.images), {}))
            return self.total_loss(batch.images, pred, batch.targets, terms, batch.n_labeled)

    def non_finite_loss(self, loss: torch.Tensor, iteration: int) -> None:
        self.skip_step(f"non-finite loss {loss.item()} at batch {iteration}")

    def backward_and_step(self, loss: torch.Tensor, iteration: int) -> bool:
        """Backward, and every `accumulate` batches an optimizer step (gradients clipped, the EMA updated)."""
        if self.dist.enabled:
            loss = loss * self.dist.world_size  # DDP averages gradients over ranks; train.py scales the same way
        self.scaler.scale(loss).backward()
        if iteration - self.last_opt_step >= self.accumulate:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.trainable.parameters(), max_norm=10.0)
            # A finite loss can still have non-finite gradients (a ratio of two underflowed sizes, say), and
            # stepping with them writes NaN into every weight: every later loss is NaN and the run is lost. AMP's
            # scaler skips such a step itself; without it, skip here. After DDP's all-reduce every rank has the
            # same norm, so all skip together.
            if not self.amp and not torch.isfinite(norm):
                self.last_opt_step = iteration  # the accumulated gradients go with the step
                self.skip_step(f"non-finite gradients at batch {iteration} (the loss was finite)")
                return False
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            self.compression.after_step()
            self.ema.update(self.student)
            self.last_opt_step = iteration
        self.bad_steps = 0
        return True

    def skip_step(self, what: str) -> None:
        """Drop this batch's gradients (and those accumulated with it); stop the run after MAX_BAD_STEPS in a row."""
        self.bad_steps += 1
        LOGGER.warning(f"WARNING: {what}; step skipped ({self.bad_steps}/{MAX_BAD_STEPS} in a row)")
        self.optimizer.zero_grad()
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(f"loss or gradients were NaN/inf for {MAX_BAD_STEPS} steps in a row; lower the "
                                f"learning rate or the distillation weights, or check the data")

    def total_loss(self, images: torch.Tensor, pred: list, targets: Optional[torch.Tensor],
                   distill_terms: dict[str, torch.Tensor], n_labeled: Optional[int] = None):
        """Total loss (per-image terms times batch size, as yolov5) and detached items in `self.loss_names`
        order: the task loss over the labeled images (the first n_labeled), the distillation terms over all."""
        n_images = images.shape[0]
        total = torch.zeros((), device=images.device)
        items = dict.fromkeys(self.loss_names, torch.zeros((), device=images.device))
        if targets is not None:
            labeled = pred if n_labeled in (None, n_images) else [p[:n_labeled] for p in pred]
            task_loss, task_items = self.compute_loss(labeled, targets)  # (box + obj + cls) * n, and the three
            total = total + task_loss.reshape(())
            items.update(zip(TASK_TERMS, task_items))
        elif not self.distiller:
            raise UserError("a batch without labels needs distillation (--d_output or --d_feature)")
        if self.distiller:
            for name, value in distill_terms.items():
                total = total + value.float() * n_images
                items[name] = value.detach().float()
        return total, torch.stack([items[n].reshape(()) for n in self.loss_names])

    def after_batch(self, batch: TrainingBatch, iteration: int) -> None:
        if self.plots and iteration < 3:  # yolov5's train_batch0-2.jpg: the batches as trained, in a thread
            self._plot("train batch", yb.plot_train_batch, batch.images, batch.targets, batch.paths,
                       self.save_dir / f"train_batch{iteration}.jpg")

    def show_progress(self, bar: tqdm, epoch: int, batch: TrainingBatch, mean_losses: torch.Tensor) -> None:
        memory = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
        counts = [f"{self.seen['labeled']}+{self.seen['unlabeled']}"] if self.unlabeled else []
        bar.set_description(("%11s" * 2 + "%11.4g" * (len(self.loss_names) + 2) + "%11s" * len(counts)) %
                            (f"{epoch}/{self.options.epochs - 1}", memory, *mean_losses.tolist(),
                             batch.targets.shape[0], batch.images.shape[-1], *counts))

    def epoch_row(self, epoch: int, mean_losses: torch.Tensor) -> dict[str, float]:
        """The losses (rank 0's, as yolov5 logs them), the learning rates, and the images taken over all ranks."""
        row = super().epoch_row(epoch, mean_losses)
        row.update({f"x/lr{i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)})
        if self.unlabeled:  # over all ranks
            row.update({f"x/{k}" + ("" if k == "pseudo_boxes" else "_images"): n
                        for k, n in ddp.summed(self.seen, self.dist, self.device).items()})
            pseudo = f", {row['x/pseudo_boxes']:g} pseudo-labels" if "x/pseudo_boxes" in row else ""
            LOGGER.info(f"epoch {epoch}: {row['x/labeled_images']} labeled and {row['x/unlabeled_images']} "
                        f"unlabeled images{pseudo}")
        return row

    # ------------------------------------------------------------------ the epochs
    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()
        self.ema.update_attr(self.student, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])

    def validate(self, epoch: int) -> dict[str, float]:
        """The EMA model, every epoch or with --noval only the final one (earlier rows keep the last figures)."""
        self._final_epoch = epoch + 1 == self.options.epochs or self.stopper.possible_stop
        if not self.options.noval or self._final_epoch:
            self.results, self.maps = self._validate(self.ema.ema)
        return dict(zip(METRIC_COLUMNS, self.results))

    def fitness(self, metrics: dict[str, float]) -> float:
        return float(yb.fitness(np.array([metrics[c] for c in METRIC_COLUMNS]).reshape(1, -1))[0])

    def should_stop(self, epoch: int, fitness: float) -> bool:
        return bool(self.stopper(epoch=epoch, fitness=fitness))

    def wants_checkpoint(self, epoch: int, stop: bool) -> bool:
        return not self.options.nosave or self._final_epoch or stop

    def cleanup(self) -> None:
        if getattr(self, "distiller", None):
            self.distiller.remove()
        if hasattr(self, "compression"):
            self.compression.remove()

    def _validate(self, model: nn.Module, verbose: bool = False, plots: bool = False):
        results, maps = yb.validate(model, self.data, self.val_loader, imgsz=self.imgsz,
                                    batch_size=self.options.batch_size * 2, save_dir=self.save_dir, half=self.amp,
                                    compute_loss=self.compute_loss, single_cls=self.options.single_cls,
                                    verbose=verbose, plots=plots)
        model.float()  # val.run halves the model on CUDA; keep the EMA accumulating in FP32
        return results, maps

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, with_training_state: bool) -> dict:
        """yolov5's checkpoint keys; the student copy is taken with its hooks removed."""
        with self.distiller.student_detached() if self.distiller else nullcontext():
            model, _ = self.compression.plain_copy(yb.de_parallel(self.student))
        ema, compression = self.compression.plain_copy(self.ema.ema)  # `quant` ranges: of the EMA, as validated
        ckpt = {
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "model": model.half(),
            "ema": ema.half(),
            "updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict() if with_training_state else None,
            "opt": self._options_dict(),
            "date": datetime.now().isoformat(),
            "yolov5pip_version": yb.YOLOV5_VERSION,
            "yolodistill_version": __version__,
            **compression,
        }
        if with_training_state and self.distiller is not None:
            ckpt["distill"] = {"adapters": self.distiller.adapters.state_dict(), "config": self.config.to_dict()}
        if with_training_state and self.teacher is not None and self.teacher.class_map is not None:
            ckpt.setdefault("distill", {})["teacher_classes"] = self.teacher.class_map.state_dict()
        return ckpt

    def saved_models(self) -> list[nn.Module]:
        return [yb.de_parallel(self.student), self.ema.ema]

    def save(self, path: Path, epoch: int, *, training_state: bool) -> None:
        save_checkpoint_atomic(self._checkpoint(epoch, with_training_state=training_state), path)

    def after_save(self, epoch: int) -> None:
        if self.options.save_period > 0 and epoch % self.options.save_period == 0:
            save_checkpoint_atomic(self._checkpoint(epoch, with_training_state=False),
                                   self.weights_dir / f"epoch{epoch}.pt")

    def finish(self) -> dict:
        """Strip last/best to plain students (yolov5's strip_optimizer) and validate best.pt per class."""
        for f in (self.last, self.best):
            if f.exists():
                yb.strip_checkpoint(f)
        final = self.best if self.best.exists() else self.last
        results = dict(zip(METRIC_COLUMNS, (0.0,) * len(METRIC_COLUMNS)))
        if final.exists():
            LOGGER.info(f"\nValidating {final}...")
            model = load_detector(final).to(self.device)  # with its INT8 quantizers after --qat
            metrics, _ = self._validate(model, verbose=True, plots=self.plots)  # yolov5's curves and matrix
            results = dict(zip(METRIC_COLUMNS, metrics))
        if self.plots:
            # yolov5's results.png (its ten panels, read by position), and every column (the distillation terms,
            # the learning rates) in results_all.png
            self._plot("results", yb.plot_results, self.run_logger.csv_path)
            self._plot("results", plot_results, self.run_logger.csv_path, self.save_dir / "results_all.png")
            yb.wait_for_plots()  # the train_batch threads: their files exist when run() returns
        LOGGER.info(f"Results saved to {self.save_dir}")
        return {"save_dir": str(self.save_dir), "best": str(final), **results}


def train(**kwargs) -> dict:
    """Python API: `yolodistill.train(data=..., cfg='yolov5n.yaml', t_weights='teacher.pt', d_feature=True)`."""
    return DistillTrainer(TrainOptions(**kwargs)).run()

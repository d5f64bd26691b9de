"""The train-loop wrapper: yolov5's own parts, composed into small steps, plus distillation terms.

Same recipe as yolov5's train.py (mosaic dataloader, ComputeLoss, ModelEMA, smart_optimizer, warmup,
linear/cosine LR, accumulation to a nominal batch of 64, AMP on CUDA, EarlyStopping, val mAP per
epoch, best.pt/last.pt, results.csv) but every loss term is a named column, and the student that
is saved is a plain YOLOv5 model: adapters live only in last.pt's 'distill' entry, for --resume.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.optim import lr_scheduler
from tqdm import tqdm

from .. import __version__
from .. import distributed as ddp
from .. import yolo_backend as yb
from ..checkpoint import save_checkpoint_atomic
from ..compress.quant import load_plain_state_dict
from ..errors import UserError
from ..paths import cfg_path
from ..run_logger import METRIC_COLUMNS, plot_results
from ..training import Trainer, TrainingError, seed_everything
from .distillation import TASK_TERMS, detection_distiller, loss_names
from .inference import load_detector
from .teacher import FrozenTeacher, load_teacher
from .train_options import NOMINAL_BATCH, TrainOptions
from .unlabeled import UnlabeledImages, select_unlabeled

LOGGER = logging.getLogger("yolodistill")
MAX_BAD_STEPS = 10  # consecutive non-finite losses before training stops
__all__ = ["DistillTrainer", "TrainOptions", "TrainingError", "train"]


class DistillTrainer(Trainer):
    """One training run; `run()` goes through setup, epochs and the final strip/validate."""

    kind = "train"

    def __init__(self, opt: TrainOptions):
        super().__init__(opt)
        if not self.main:
            yb.set_yolov5_verbosity(False)
        self.config = self.opts.distill_config()
        self.names = loss_names(self.config)
        self.cuda = self.device.type != "cpu"
        # yolov5's check_amp downloads weights to test AMP; AMP on CUDA is safe for these models.
        self.amp = self.cuda
        self.plots = self.main and not self.opts.noplots  # yolov5: rank 0 draws, unless --noplots

    # ------------------------------------------------------------------ setup
    def load_resume_state(self, last: Path) -> dict:
        ckpt = yb.load_yolov5_checkpoint(last, trust=self.opts.trust_checkpoint)
        if not isinstance(ckpt, dict) or "opt" not in ckpt or ckpt.get("model") is None:
            raise UserError(f"{last} is not a yolodistill/yolov5 training checkpoint (no 'opt'/'model' entry)")
        if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
            raise UserError(f"{last} is from a finished run (optimizer stripped); nothing to resume")
        opt = TrainOptions.from_dict(ckpt["opt"])
        opt.resume, opt.weights, opt.cfg = str(last), str(last), ""
        opt.save_dir = str(last.parent.parent)
        opt.trust_checkpoint = self.opts.trust_checkpoint or opt.trust_checkpoint
        self.opts = opt
        LOGGER.info(f"Resuming training from {last} (epoch {ckpt['epoch'] + 1} of {opt.epochs})")
        return ckpt

    def _setup_hyp_and_data(self) -> None:
        opt = self.opts
        if opt.hyp_dict is None:
            if not opt.hyp and (opt.qat or opt.sparsity):
                opt.hyp = str(cfg_path("hyp.finetune.yaml"))
                LOGGER.info(f"--qat/--sparsity fine-tune: hyperparameters from {opt.hyp} (low lr, no warmup)")
            opt.hyp_dict = yb.load_hyp(opt.hyp)
        self.hyp = dict(opt.hyp_dict)
        if not opt.data:
            raise UserError("--data is required (a YOLOv5 dataset yaml)")
        self.data = yb.load_data_yaml(opt.data)
        self.nc = 1 if opt.single_cls else int(self.data["nc"])
        names = self.data["names"]
        self.class_names = {0: "item"} if opt.single_cls and len(names) != 1 else names
        if not self.resume_ckpt and self.main:
            with open(self.save_dir / "hyp.yaml", "w") as f:
                yaml.safe_dump(self.hyp, f, sort_keys=False)

    def _setup_models(self) -> None:
        opt = self.opts
        seed_everything(opt.seed + 1, deterministic=True)  # train.py's seeding (before any weight is drawn)
        self.teacher: Optional[FrozenTeacher] = None
        if opt.t_weights:
            self.teacher = load_teacher(opt.t_weights, cfg=opt.t_cfg, nc=self.nc, device=self.device,
                                        half=self.cuda, trust=opt.trust_checkpoint)
        self.student, _ = yb.create_student(opt.weights, opt.cfg, self.nc, self.hyp, trust=opt.trust_checkpoint)
        self.student.to(self.device)
        fresh = not opt.weights  # a student built from a yaml has untrained anchors: take the teacher's
        if self.teacher is not None and fresh and self.config.output:
            yb.copy_anchors(self.teacher.model, self.student)
            LOGGER.info("Student anchors set to the teacher's (output distillation compares the heads cell by cell)")
        self._freeze_layers()
        if self.dist.rank > 0:
            # Every rank drew the same initial weights (so 2:4 masks computed before DDP's broadcast agree);
            # from here on the other ranks differ, in augmentation. Rank 0 keeps a single process's draws.
            seed_everything(opt.seed + 1 + self.dist.rank, deterministic=True)
        self.gs = yb.max_stride(self.student)
        self.imgsz = yb.check_img_size(opt.imgsz, self.gs, floor=self.gs * 2)
        if self.imgsz != opt.imgsz:
            LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} is not a multiple of the max stride {self.gs}, "
                           f"using {self.imgsz}")

    def _freeze_layers(self) -> None:
        freeze = self.opts.freeze if isinstance(self.opts.freeze, (list, tuple)) else [self.opts.freeze]
        prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(int(freeze[0])))]
        for k, v in self.student.named_parameters():
            v.requires_grad = not any(p in k for p in prefixes)

    def _setup_loaders(self) -> None:
        opt = self.opts
        self.train_loader, self.dataset = yb.create_train_loader(
            self.data["train"], self.imgsz, self.batch_size, self.gs, self.hyp, workers=opt.workers, seed=opt.seed,
            single_cls=opt.single_cls, cache=None if opt.cache == "val" else opt.cache, rect=opt.rect,
            image_weights=opt.image_weights, quad=opt.quad, rank=self.dist.local_rank if self.dist.enabled else -1)
        yb.check_labels(self.dataset, self.nc, opt.data)
        self.unlabeled = self._unlabeled_images()
        self.val_loader = None
        if self.main:  # only rank 0 validates
            self.val_loader = yb.create_val_loader(self.data["val"], self.imgsz, self.batch_size * 2, self.gs,
                                                   self.hyp, workers=opt.workers * 2, single_cls=opt.single_cls,
                                                   cache=None if opt.noval else opt.cache)
        # anchors are buffers: DDP hands rank 0's to the other ranks when it wraps the student
        if not self.resume_ckpt and not opt.noautoanchor and not self.config.output and self.main:
            yb.autoanchor(self.dataset, self.student, thr=self.hyp["anchor_t"], imgsz=self.imgsz)
        self.student.half().float()  # pre-reduce anchor precision, as train.py

    def _unlabeled_images(self) -> Optional[UnlabeledImages]:
        """--unlabeled (or the dataset yaml's `unlabeled:`), checked against the labeled and the val images."""
        files = select_unlabeled(self.opts, self.data, distilling=self.config.enabled, labeled=self.dataset.im_files)
        if not files:
            return None
        return UnlabeledImages(files, save_dir=self.save_dir, labeled_batch=self.batch_size,
                               ratio=self.opts.unlabeled_ratio, imgsz=self.imgsz, stride=self.gs, hyp=self.hyp,
                               workers=self.opts.workers, seed=self.opts.seed, dist=self.dist)

    def _setup_compression(self) -> None:
        """--sparsity / --qat: prune and quantize the student before the EMA copy and the hooks exist."""
        opt = self.opts
        if (opt.qat or opt.sparsity) and not opt.weights:
            LOGGER.warning("WARNING: --qat/--sparsity from random weights; they are meant to fine-tune a trained "
                           "(distilled) student: pass --weights student.pt")
        self.compression = self.setup_compression(
            self.student, self.train_loader, lambda batch: batch[0].to(self.device, non_blocking=True).float() / 255,
            quant_state=(self.resume_ckpt or {}).get("quant"))

    def _check_pseudo_label_classes(self) -> bool:
        """--pseudo-labels makes the teacher's classes the targets, so they must be the dataset's; under
        --single-cls every class is one. True: map the teacher's classes to class 0."""
        if self.teacher is None or not self.unlabeled or not self.opts.pseudo_labels:
            return False
        teacher_nc = yb.num_classes(self.teacher.model)
        if teacher_nc != self.nc and not self.opts.single_cls:
            raise UserError(f"--pseudo-labels makes the teacher's classes targets: the teacher has nc={teacher_nc}, "
                            f"the dataset nc={self.nc}")
        return teacher_nc != self.nc

    def _setup_training(self) -> None:
        opt = self.opts
        self._setup_compression()
        self.scaled_hyp = yb.prepare_for_loss(self.student, self.hyp, self.nc, self.imgsz, self.class_names,
                                              self.dataset.labels, opt.label_smoothing)
        self.compute_loss = yb.ComputeLoss(self.student)
        self.pseudo_classes_to_one = self._check_pseudo_label_classes()
        self.distiller = None
        if self.teacher is not None and self.config.enabled:
            self.distiller = detection_distiller(self.student, self.teacher, self.config, gains=self.scaled_hyp,
                                       imgsz=self.imgsz, device=self.device)
            LOGGER.info(f"loss = ((box + obj + cls) + {self.distiller.describe()}) * batch_size")
        elif self.teacher is not None and self.unlabeled and opt.pseudo_labels:
            LOGGER.info(f"the teacher labels the unlabeled images (--pseudo-labels {opt.pseudo_labels:g}); no "
                        f"distillation terms: loss = (box + obj + cls) * batch_size over all images")
        elif self.teacher is not None:
            LOGGER.warning("WARNING: --t_weights given without --d_output/--d_feature: the teacher is not used")
        # student + adapters when distilling: what the optimizer trains, gradients are clipped over and DDP wraps
        self.trainable = self.distiller if self.distiller else self.student

        if opt.nbs < 1:
            raise UserError(f"--nbs must be at least 1, got {opt.nbs}")
        self.accumulate = max(round(opt.nbs / opt.batch_size), 1)
        # yolov5 scales weight decay to the images per optimizer step, relative to its nominal 64
        weight_decay = self.hyp["weight_decay"] * opt.batch_size * self.accumulate / NOMINAL_BATCH
        self.optimizer = yb.smart_optimizer(self.trainable, opt.optimizer, self.hyp["lr0"], self.hyp["momentum"],
                                            weight_decay)
        self.lf = yb.lr_lambda(opt.epochs, self.hyp["lrf"], opt.cos_lr)
        self.scheduler = lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        # The EMA deep-copies the student now, before any hook exists, so it never carries one.
        self.ema = yb.ModelEMA(self.student)
        self._setup_distributed()
        self.best_fitness, self.start_epoch = 0.0, 0
        if self.resume_ckpt:
            self._restore(self.resume_ckpt)
            self.resume_ckpt = None
        self.scheduler.last_epoch = self.start_epoch - 1
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.stopper = yb.EarlyStopping(patience=opt.patience)
        # yolov5's columns first, in its order (its plot_results and users' scripts read them by position), then
        # the distillation terms and the unlabeled images' counts
        task = [f"train/{n}" for n in self.names if n in TASK_TERMS]
        columns = task + list(METRIC_COLUMNS) + [f"x/lr{i}" for i in range(len(self.optimizer.param_groups))] + \
                  [f"train/{n}" for n in self.names if n not in TASK_TERMS] + \
                  (["x/labeled_images", "x/unlabeled_images"] if self.unlabeled else []) + \
                  (["x/pseudo_boxes"] if self.unlabeled and opt.pseudo_labels > 0 else [])
        self.open_run_logger(columns, self._opt_dict())

    def _setup_distributed(self) -> None:
        """Under torchrun: optional SyncBatchNorm (after the EMA copy, which keeps plain BatchNorm, as train.py),
        then DDP around the student, or around student + adapters when distilling."""
        self.forward_model: nn.Module = self.trainable
        if not self.dist.enabled:
            return
        if self.opts.sync_bn:
            if self.device.type != "cuda":
                raise UserError("--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not run on the CPU")
            nn.SyncBatchNorm.convert_sync_batchnorm(self.student)  # in place: the optimizer keeps its parameters
            LOGGER.info("Using SyncBatchNorm()")
        self.forward_model = ddp.wrap(self.trainable, self.dist, self.device)
        LOGGER.info(f"DDP: rank {self.dist.rank} of {self.dist.world_size} on {self.device}, "
                    f"{self.batch_size} images per rank")

    def _restore(self, ckpt: dict) -> None:
        """Put EMA, optimizer, adapters, epoch and best fitness back from a last.pt."""
        if ckpt.get("ema") is not None:
            load_plain_state_dict(self.ema.ema, ckpt["ema"].float().state_dict())
            self.ema.updates = ckpt.get("updates", 0)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        distill_state = ckpt.get("distill") or {}
        if self.distiller is not None and distill_state.get("adapters") is not None:
            self.distiller.adapters.load_state_dict(distill_state["adapters"])
        self.best_fitness = float(ckpt.get("best_fitness") or 0.0)
        self.start_epoch = int(ckpt["epoch"]) + 1
        if self.start_epoch >= self.opts.epochs:  # killed after the last epoch, while stripping or validating
            LOGGER.info(f"{self.opts.resume}: all {self.opts.epochs} epochs are done; finishing the run")

    def _opt_dict(self) -> dict:
        d = asdict(self.opts)
        d["resume"] = bool(d["resume"])
        return d

    def build(self) -> None:
        """Run folder, data, teacher and student, loaders, loss, distiller, optimizer, EMA (and resume state)."""
        opt = self.opts
        opt.save_dir = str(self.make_run_dir(Path(opt.save_dir) if opt.save_dir else None))
        self._setup_hyp_and_data()
        self._setup_models()
        self._setup_loaders()
        if self.plots and not self.opts.resume:  # yolov5's on_pretrain_routine_end: the labeled set's labels
            self._plot("labels", yb.plot_labels, self.dataset.labels, self.class_names, self.save_dir)
        self._setup_training()
        self.last_opt_step, self.bad_steps = -1, 0
        self.nw = yb.warmup_iterations(self.hyp, len(self.train_loader))
        self.results, self.maps = (0.0,) * len(METRIC_COLUMNS), np.zeros(self.nc)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        LOGGER.info(f"Image sizes {self.imgsz} train, {self.imgsz} val; {self.train_loader.num_workers} dataloader "
                    f"workers; logging results to {self.save_dir}; training for {self.opts.epochs} epochs...")
        if self.distiller:
            self.distiller.attach()
        return super().fit()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        mloss = self._train_epoch(epoch, len(self.train_loader), self.maps)
        row = {f"train/{n}": float(v) for n, v in zip(self.names, mloss)}
        row.update({f"x/lr{i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)})
        if self.unlabeled:  # over all ranks
            row.update({f"x/{k}" + ("" if k == "pseudo_boxes" else "_images"): n
                        for k, n in ddp.summed(self.seen, self.dist, self.device).items()})
            pseudo = f", {row['x/pseudo_boxes']:g} pseudo-labels" if "x/pseudo_boxes" in row else ""
            LOGGER.info(f"epoch {epoch}: {row['x/labeled_images']} labeled and {row['x/unlabeled_images']} "
                        f"unlabeled images{pseudo}")
        return row

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()
        self.ema.update_attr(self.student, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])

    def validate(self, epoch: int) -> dict[str, float]:
        """The EMA model, every epoch or with --noval only the final one (earlier rows keep the last figures)."""
        self._final_epoch = epoch + 1 == self.opts.epochs or self.stopper.possible_stop
        if not self.opts.noval or self._final_epoch:
            self.results, self.maps = self._validate(self.ema.ema)
        return dict(zip(METRIC_COLUMNS, self.results))

    def fitness(self, metrics: dict[str, float]) -> float:
        return float(yb.fitness(np.array([metrics[c] for c in METRIC_COLUMNS]).reshape(1, -1))[0])

    def should_stop(self, epoch: int, fitness: float) -> bool:
        return bool(self.stopper(epoch=epoch, fitness=fitness))

    def wants_checkpoint(self, epoch: int, stop: bool) -> bool:
        return not self.opts.nosave or self._final_epoch or stop

    def cleanup(self) -> None:
        if getattr(self, "distiller", None):
            self.distiller.remove()
        if hasattr(self, "compression"):
            self.compression.remove()

    def _train_epoch(self, epoch: int, nb: int, maps: np.ndarray) -> torch.Tensor:
        opt = self.opts
        self.trainable.train()  # the teacher is not in here; FrozenTeacher.train() is a no-op anyway
        if opt.image_weights:
            yb.reweight_images(self.dataset, self.student, maps, self.nc)
        if self.dist.enabled:
            self.train_loader.sampler.set_epoch(epoch)  # a different shard order every epoch
        mloss = torch.zeros(len(self.names), device=self.device)
        shorts = [n.replace("distill/", "d_") for n in self.names]
        seen = ["Images"] if self.unlabeled else []  # labeled+unlabeled taken so far this epoch
        LOGGER.info(("\n" + "%11s" * (4 + len(shorts) + len(seen))) % ("Epoch", "GPU_mem", *shorts, "Instances",
                                                                         "Size", *seen))
        pbar = tqdm(enumerate(self.train_loader), total=nb, bar_format=yb.TQDM_BAR_FORMAT, disable=not self.main)
        unlabeled = self.unlabeled.stream(epoch) if self.unlabeled else None
        pseudo = unlabeled is not None and opt.pseudo_labels > 0
        self.seen = {"labeled": 0, "unlabeled": 0, **({"pseudo_boxes": 0} if pseudo else {})}
        self.optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            ni = i + nb * epoch
            n_labeled = imgs.shape[0]
            if unlabeled is not None:  # after the labeled images: the task loss takes the first n_labeled
                imgs = torch.cat([imgs, next(unlabeled)[:self.unlabeled.share(n_labeled)]])
            self.seen["labeled"] += n_labeled
            self.seen["unlabeled"] += imgs.shape[0] - n_labeled
            imgs = imgs.to(self.device, non_blocking=True).float() / 255
            targets = targets.to(self.device)
            if pseudo:  # the teacher labels the unlabeled images: the task loss takes all
                boxes = yb.pseudo_labels(self.teacher.model, imgs[n_labeled:], conf_thres=opt.pseudo_labels,
                                         first_index=n_labeled)
                if self.pseudo_classes_to_one:
                    boxes[:, 1] = 0
                targets, n_labeled = torch.cat([targets, boxes]), imgs.shape[0]
                self.seen["pseudo_boxes"] += len(boxes)
            if ni <= self.nw:
                self.accumulate = yb.warm_up(self.optimizer, ni, self.nw, self.hyp, self.lf(epoch),
                                             opt.nbs / opt.batch_size)
            if opt.multi_scale:
                imgs = yb.random_rescale(imgs, self.imgsz, self.gs)
            items = self.training_step(imgs, targets, ni, n_labeled)
            if self.plots and ni < 3:  # yolov5's train_batch0-2.jpg: the batches as trained, in a thread
                self._plot("train batch", yb.plot_train_batch, imgs, targets, paths,
                           self.save_dir / f"train_batch{ni}.jpg")
            if items is not None:
                mloss = (mloss * i + items) / (i + 1)
            mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
            counts = [f"{self.seen['labeled']}+{self.seen['unlabeled']}"] if seen else []
            pbar.set_description(("%11s" * 2 + "%11.4g" * (len(shorts) + 2) + "%11s" * len(counts)) %
                                 (f"{epoch}/{opt.epochs - 1}", mem, *mloss.tolist(), targets.shape[0],
                                  imgs.shape[-1], *counts))
        return mloss

    def training_step(self, imgs: torch.Tensor, targets: Optional[torch.Tensor], ni: int,
                      n_labeled: Optional[int] = None) -> Optional[torch.Tensor]:
        """Forward, loss, backward and (every `accumulate` batches) an optimizer step.

        `targets` (N, 6: image, class, x, y, w, h) label the first `n_labeled` images (all by default); the
        others, and a whole batch when `targets` is None, get only the distillation terms. Returns the per-term
        loss items, or None for a skipped step.
        """
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            pred, terms = self.forward_model(imgs) if self.distiller else (self.forward_model(imgs), {})
            loss, items = self.total_loss(imgs, pred, targets, terms, n_labeled)
        if not self.all_finite(loss):
            return self._skip_step(f"non-finite loss {loss.item()} at batch {ni}")
        if self.dist.enabled:
            loss = loss * self.dist.world_size  # DDP averages gradients over ranks; train.py scales the same way
        self.scaler.scale(loss).backward()
        if ni - self.last_opt_step >= self.accumulate:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.trainable.parameters(), max_norm=10.0)
            # A finite loss can still have non-finite gradients (a ratio of two underflowed sizes, say), and
            # stepping with them writes NaN into every weight: every later loss is NaN and the run is lost. AMP's
            # scaler skips such a step itself; without it, skip here. After DDP's all-reduce every rank has the
            # same norm, so all skip together.
            if not self.amp and not torch.isfinite(norm):
                self.last_opt_step = ni  # the accumulated gradients go with the step
                return self._skip_step(f"non-finite gradients at batch {ni} (the loss was finite)")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            self.compression.after_step()
            self.ema.update(self.student)
            self.last_opt_step = ni
        self.bad_steps = 0
        return items

    def _skip_step(self, what: str) -> None:
        """Drop this batch's gradients (and those accumulated with it); stop the run after MAX_BAD_STEPS in a row."""
        self.bad_steps += 1
        LOGGER.warning(f"WARNING: {what}; step skipped ({self.bad_steps}/{MAX_BAD_STEPS} in a row)")
        self.optimizer.zero_grad()
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingError(f"loss or gradients were NaN/inf for {MAX_BAD_STEPS} steps in a row; lower the "
                                f"learning rate or the distillation weights, or check the data")
        return None

    def total_loss(self, imgs: torch.Tensor, pred: list, targets: Optional[torch.Tensor],
                   distill_terms: dict[str, torch.Tensor], n_labeled: Optional[int] = None):
        """Total loss (per-image terms times batch size, as yolov5) and detached items in `self.names` order:
        the task loss over the labeled images (the first n_labeled), the distillation terms over all."""
        bs = imgs.shape[0]
        total = torch.zeros((), device=imgs.device)
        items = dict.fromkeys(self.names, torch.zeros((), device=imgs.device))
        if targets is not None:
            labeled = pred if n_labeled in (None, bs) else [p[:n_labeled] for p in pred]
            task_loss, task_items = self.compute_loss(labeled, targets)  # (box + obj + cls) * n, and the three
            total = total + task_loss.reshape(())
            items.update(zip(TASK_TERMS, task_items))
        elif not self.distiller:
            raise UserError("a batch without labels needs distillation (--d_output or --d_feature)")
        if self.distiller:
            for name, value in distill_terms.items():
                total = total + value.float() * bs
                items[name] = value.detach().float()
        return total, torch.stack([items[n].reshape(()) for n in self.names])

    def _validate(self, model: nn.Module, verbose: bool = False, plots: bool = False):
        results, maps = yb.validate(model, self.data, self.val_loader, imgsz=self.imgsz,
                                    batch_size=self.opts.batch_size * 2, save_dir=self.save_dir, half=self.amp,
                                    compute_loss=self.compute_loss, single_cls=self.opts.single_cls, verbose=verbose,
                                    plots=plots)
        model.float()  # val.run halves the model on CUDA; keep the EMA accumulating in FP32
        return results, maps

    def _plot(self, what: str, plot, *args) -> None:
        """A plot is a by-product: one that fails is a warning, never the end of a training run."""
        try:
            plot(*args)
        except Exception as e:  # noqa: BLE001 -- matplotlib, seaborn and Pillow raise many kinds
            LOGGER.warning(f"WARNING: {what} plot failed: {type(e).__name__}: {e}")

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
            "opt": self._opt_dict(),
            "date": datetime.now().isoformat(),
            "yolov5pip_version": yb.YOLOV5_VERSION,
            "yolodistill_version": __version__,
            **compression,
        }
        if with_training_state and self.distiller is not None:
            ckpt["distill"] = {"adapters": self.distiller.adapters.state_dict(), "config": self.config.to_dict()}
        return ckpt

    def saved_models(self) -> list[nn.Module]:
        return [yb.de_parallel(self.student), self.ema.ema]

    def save(self, path: Path, epoch: int, *, training_state: bool) -> None:
        save_checkpoint_atomic(self._checkpoint(epoch, with_training_state=training_state), path)

    def after_save(self, epoch: int) -> None:
        if self.opts.save_period > 0 and epoch % self.opts.save_period == 0:
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

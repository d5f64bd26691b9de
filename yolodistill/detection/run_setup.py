"""Everything a detection run builds before its first epoch, in yolov5 train.py's order, and what --resume puts
back: the run folder and hyperparameters, the dataset, teacher and student, the loaders (with the unlabeled
images), compression, the loss and the distiller, the optimizer and LR schedule, the EMA, DDP and results.csv.
DistillTrainer (trainer.py) trains what is built here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.optim import lr_scheduler

from .. import distributed as ddp
from .. import yolo_backend as yb
from ..compress.quant import load_plain_state_dict
from ..errors import UserError
from ..paths import cfg_path
from ..run_logger import METRIC_COLUMNS
from ..training import Trainer, seed_everything
from .class_map import TeacherClassMap
from .distillation import TASK_TERMS, detection_distiller, loss_names
from .teacher import FrozenTeacher, load_teacher
from .train_options import NOMINAL_BATCH, TrainOptions
from .unlabeled import UnlabeledImages, select_unlabeled

LOGGER = logging.getLogger("yolodistill")


class DetectionRunSetup(Trainer):
    """A detection run up to its first epoch: build() makes everything DistillTrainer's steps use."""

    kind = "train"

    def __init__(self, options: TrainOptions):
        super().__init__(options)
        if not self.main:
            yb.set_yolov5_verbosity(False)
        self.config = self.options.distill_config()
        self.loss_names = loss_names(self.config)
        self.cuda = self.device.type != "cpu"
        # yolov5's check_amp downloads weights to test AMP; AMP on CUDA is safe for these models.
        self.amp = self.cuda
        self.plots = self.main and not self.options.noplots  # yolov5: rank 0 draws, unless --noplots

    def load_resume_state(self, last: Path) -> dict:
        ckpt = yb.load_yolov5_checkpoint(last, trust=self.options.trust_checkpoint)
        if not isinstance(ckpt, dict) or "opt" not in ckpt or ckpt.get("model") is None:
            raise UserError(f"{last} is not a yolodistill/yolov5 training checkpoint (no 'opt'/'model' entry)")
        if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
            raise UserError(f"{last} is from a finished run (optimizer stripped); nothing to resume")
        options = TrainOptions.from_dict(ckpt["opt"])
        options.resume, options.weights, options.cfg = str(last), str(last), ""
        options.save_dir = str(last.parent.parent)
        options.trust_checkpoint = self.options.trust_checkpoint or options.trust_checkpoint
        self.options = options
        LOGGER.info(f"Resuming training from {last} (epoch {ckpt['epoch'] + 1} of {options.epochs})")
        return ckpt

    def build(self) -> None:
        """Run folder, data, teacher and student, loaders, loss, distiller, optimizer, EMA (and resume state)."""
        options = self.options
        options.save_dir = str(self.make_run_dir(Path(options.save_dir) if options.save_dir else None))
        self._setup_hyp_and_data()
        self._setup_models()
        self._setup_loaders()
        if self.plots and not self.options.resume:  # yolov5's on_pretrain_routine_end: the labeled set's labels
            self._plot("labels", yb.plot_labels, self.dataset.labels, self.class_names, self.save_dir)
        self._setup_training()
        self.last_opt_step, self.bad_steps = -1, 0
        self.warmup_iterations = yb.warmup_iterations(self.hyp, len(self.train_loader))
        self.results, self.maps = (0.0,) * len(METRIC_COLUMNS), np.zeros(self.num_classes)

    def _setup_hyp_and_data(self) -> None:
        options = self.options
        if options.hyp_dict is None:
            if not options.hyp and (options.qat or options.sparsity):
                options.hyp = str(cfg_path("hyp.finetune.yaml"))
                LOGGER.info(f"--qat/--sparsity fine-tune: hyperparameters from {options.hyp} (low lr, no warmup)")
            options.hyp_dict = yb.load_hyp(options.hyp)
        self.hyp = dict(options.hyp_dict)
        if not options.data:
            raise UserError("--data is required (a YOLOv5 dataset yaml)")
        self.data = yb.load_data_yaml(options.data)
        self.num_classes = 1 if options.single_cls else int(self.data["nc"])
        names = self.data["names"]
        self.class_names = {0: "item"} if options.single_cls and len(names) != 1 else names
        if not self.resume_ckpt and self.main:
            with open(self.save_dir / "hyp.yaml", "w") as f:
                yaml.safe_dump(self.hyp, f, sort_keys=False)

    def _setup_models(self) -> None:
        options = self.options
        seed_everything(options.seed + 1, deterministic=True)  # train.py's seeding (before any weight is drawn)
        self.teacher: Optional[FrozenTeacher] = None
        if options.t_weights:
            self.teacher = load_teacher(options.t_weights, cfg=options.t_cfg, nc=self.num_classes,
                                        device=self.device, half=self.cuda, trust=options.trust_checkpoint,
                                        **self._teacher_classes())
        self.student, _ = yb.create_student(options.weights, options.cfg, self.num_classes, self.hyp,
                                            trust=options.trust_checkpoint)
        self.student.to(self.device)
        fresh = not options.weights  # a student built from a yaml has untrained anchors: take the teacher's
        if self.teacher is not None and fresh and self.config.output:
            yb.copy_anchors(self.teacher.model, self.student)
            LOGGER.info("Student anchors set to the teacher's (output distillation compares the heads cell by cell)")
        self._freeze_layers()
        if self.dist.rank > 0:
            # Every rank drew the same initial weights (so 2:4 masks computed before DDP's broadcast agree);
            # from here on the other ranks differ, in augmentation. Rank 0 keeps a single process's draws.
            seed_everything(options.seed + 1 + self.dist.rank, deterministic=True)
        self.max_stride = yb.max_stride(self.student)  # yolov5's gs
        self.imgsz = yb.check_img_size(options.imgsz, self.max_stride, floor=self.max_stride * 2)
        if self.imgsz != options.imgsz:
            LOGGER.warning(f"WARNING: --imgsz {options.imgsz} is not a multiple of the max stride {self.max_stride}, "
                           f"using {self.imgsz}")

    def _teacher_classes(self) -> dict:
        """load_teacher's arguments for the teacher's classes: the dataset's names to match (and --t_classes), and
        a resumed run's map as it was; none under --single-cls (every class is one) or when the teacher is unused."""
        options = self.options
        if options.single_cls:
            if options.t_classes:
                raise UserError("--t_classes does not go with --single-cls: every class is one there")
            return {}
        if not (self.config.enabled or options.pseudo_labels):
            return {}
        stored = ((self.resume_ckpt or {}).get("distill") or {}).get("teacher_classes")
        return {"student_names": self.class_names, "class_pairs": options.t_classes,
                "class_map": None if stored is None else TeacherClassMap.from_state_dict(stored)}

    def _freeze_layers(self) -> None:
        freeze = self.options.freeze if isinstance(self.options.freeze, (list, tuple)) else [self.options.freeze]
        prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(int(freeze[0])))]
        for k, v in self.student.named_parameters():
            v.requires_grad = not any(p in k for p in prefixes)

    def _setup_loaders(self) -> None:
        options = self.options
        self.train_loader, self.dataset = yb.create_train_loader(
            self.data["train"], self.imgsz, self.batch_size, self.max_stride, self.hyp, workers=options.workers,
            seed=options.seed, single_cls=options.single_cls, cache=None if options.cache == "val" else options.cache,
            rect=options.rect, image_weights=options.image_weights, quad=options.quad,
            rank=self.dist.local_rank if self.dist.enabled else -1)
        yb.check_labels(self.dataset, self.num_classes, options.data)
        self.unlabeled = self._unlabeled_images()
        self.val_loader = None
        if self.main:  # only rank 0 validates
            self.val_loader = yb.create_val_loader(self.data["val"], self.imgsz, self.batch_size * 2, self.max_stride,
                                                   self.hyp, workers=options.workers * 2,
                                                   single_cls=options.single_cls,
                                                   cache=None if options.noval else options.cache)
        # anchors are buffers: DDP hands rank 0's to the other ranks when it wraps the student
        if not self.resume_ckpt and not options.noautoanchor and not self.config.output and self.main:
            yb.autoanchor(self.dataset, self.student, thr=self.hyp["anchor_t"], imgsz=self.imgsz)
        self.student.half().float()  # pre-reduce anchor precision, as train.py

    def _unlabeled_images(self) -> Optional[UnlabeledImages]:
        """--unlabeled (or the dataset yaml's `unlabeled:`), checked against the labeled and the val images."""
        files = select_unlabeled(self.options, self.data, distilling=self.config.enabled,
                                 labeled=self.dataset.im_files)
        if not files:
            return None
        return UnlabeledImages(files, save_dir=self.save_dir, labeled_batch=self.batch_size,
                               ratio=self.options.unlabeled_ratio, imgsz=self.imgsz, stride=self.max_stride,
                               hyp=self.hyp, workers=self.options.workers, seed=self.options.seed, dist=self.dist)

    def _setup_compression(self) -> None:
        """--sparsity / --qat: prune and quantize the student before the EMA copy and the hooks exist."""
        options = self.options
        if (options.qat or options.sparsity) and not options.weights:
            LOGGER.warning("WARNING: --qat/--sparsity from random weights; they are meant to fine-tune a trained "
                           "(distilled) student: pass --weights student.pt")
        self.compression = self.setup_compression(
            self.student, self.train_loader, lambda batch: batch[0].to(self.device, non_blocking=True).float() / 255,
            quant_state=(self.resume_ckpt or {}).get("quant"))

    def _check_pseudo_label_classes(self) -> bool:
        """--pseudo-labels makes the teacher's classes the targets, so they must be the dataset's (or mapped to
        them: class_map.py); under --single-cls every class is one. True: map the teacher's classes to class 0."""
        if self.teacher is None or not self.unlabeled or not self.options.pseudo_labels:
            return False
        teacher_classes = self.teacher.num_classes
        if teacher_classes != self.num_classes and not self.options.single_cls:
            raise UserError(f"--pseudo-labels makes the teacher's classes targets: the teacher has "
                            f"nc={teacher_classes}, the dataset nc={self.num_classes}")
        return teacher_classes != self.num_classes

    def _setup_training(self) -> None:
        options = self.options
        self._setup_compression()
        self.scaled_hyp = yb.prepare_for_loss(self.student, self.hyp, self.num_classes, self.imgsz, self.class_names,
                                              self.dataset.labels, options.label_smoothing)
        self.compute_loss = yb.ComputeLoss(self.student)
        self.pseudo_classes_to_one = self._check_pseudo_label_classes()
        self.distiller = None
        if self.teacher is not None and self.config.enabled:
            self.distiller = detection_distiller(self.student, self.teacher, self.config, gains=self.scaled_hyp,
                                                 imgsz=self.imgsz, device=self.device)
            LOGGER.info(f"loss = ((box + obj + cls) + {self.distiller.describe()}) * batch_size")
        elif self.teacher is not None and self.unlabeled and options.pseudo_labels:
            LOGGER.info(f"the teacher labels the unlabeled images (--pseudo-labels {options.pseudo_labels:g}); no "
                        f"distillation terms: loss = (box + obj + cls) * batch_size over all images")
        elif self.teacher is not None:
            LOGGER.warning("WARNING: --t_weights given without --d_output/--d_feature: the teacher is not used")
        # student + adapters when distilling: what the optimizer trains, gradients are clipped over and DDP wraps
        self.trainable = self.distiller if self.distiller else self.student

        if options.nbs < 1:
            raise UserError(f"--nbs must be at least 1, got {options.nbs}")
        self.accumulate = max(round(options.nbs / options.batch_size), 1)
        # yolov5 scales weight decay to the images per optimizer step, relative to its nominal 64
        weight_decay = self.hyp["weight_decay"] * options.batch_size * self.accumulate / NOMINAL_BATCH
        self.optimizer = yb.smart_optimizer(self.trainable, options.optimizer, self.hyp["lr0"], self.hyp["momentum"],
                                            weight_decay)
        self.lr_lambda = yb.lr_lambda(options.epochs, self.hyp["lrf"], options.cos_lr)
        self.scheduler = lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lr_lambda)
        # The EMA deep-copies the student now, before any hook exists, so it never carries one.
        self.ema = yb.ModelEMA(self.student)
        self._setup_distributed()
        self.best_fitness, self.start_epoch = 0.0, 0
        if self.resume_ckpt:
            self._restore(self.resume_ckpt)
            self.resume_ckpt = None
        self.scheduler.last_epoch = self.start_epoch - 1
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.stopper = yb.EarlyStopping(patience=options.patience)
        # yolov5's columns first, in its order (its plot_results and users' scripts read them by position), then
        # the distillation terms and the unlabeled images' counts
        task = [f"train/{n}" for n in self.loss_names if n in TASK_TERMS]
        columns = task + list(METRIC_COLUMNS) + [f"x/lr{i}" for i in range(len(self.optimizer.param_groups))] + \
            [f"train/{n}" for n in self.loss_names if n not in TASK_TERMS] + \
            (["x/labeled_images", "x/unlabeled_images"] if self.unlabeled else []) + \
            (["x/pseudo_boxes"] if self.unlabeled and options.pseudo_labels > 0 else [])
        self.open_run_logger(columns, self._options_dict())

    def _setup_distributed(self) -> None:
        """Under torchrun: optional SyncBatchNorm (after the EMA copy, which keeps plain BatchNorm, as train.py),
        then DDP around the student, or around student + adapters when distilling."""
        self.forward_model: nn.Module = self.trainable
        if not self.dist.enabled:
            return
        if self.options.sync_bn:
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
        if self.start_epoch >= self.options.epochs:  # killed after the last epoch, while stripping or validating
            LOGGER.info(f"{self.options.resume}: all {self.options.epochs} epochs are done; finishing the run")

    def _options_dict(self) -> dict:
        """The options as opt.yaml and the checkpoint's 'opt' keep them (--resume reads them back)."""
        d = asdict(self.options)
        d["resume"] = bool(d["resume"])
        return d

    def _plot(self, what: str, plot: Callable, *args) -> None:
        """A plot is a by-product: one that fails is a warning, never the end of a training run."""
        try:
            plot(*args)
        except Exception as e:  # noqa: BLE001 -- matplotlib, seaborn and Pillow raise many kinds
            LOGGER.warning(f"WARNING: {what} plot failed: {type(e).__name__}: {e}")

"""Classifier training from labels on the shared Trainer (yolodistill.training); distill.py (Hinton KD) and
clip_distill.py (CLIP embeddings) change only the loss and what the model outputs.

One epoch loop, three loss recipes. Each trainer declares its loss names once; they drive the
progress bar, results.csv (train/<name>) and results.png. Checkpoints are plain classifiers (see
models.py), written atomically: best.pt on val top-1, last.pt every epoch. Until the final epoch, last.pt
also carries a `resume` entry (optimizer, scheduler, options, adapters, RNG) for --resume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from yolodistill import distributed as ddp
from yolodistill.training import Trainer, seed_everything, select_device
from yolodistill.errors import UserError
from yolodistill.run_logger import plot_results
from .data import ImageDataset, LabeledFolder, build_transform, split_folders
from .options import ClassifyOptions
from .models import (build_classifier, classifier_from_checkpoint, default_normalisation, load_classifier,
                     read_checkpoint, save_classifier)

LOGGER = logging.getLogger("yolodistill")
ACC_COLUMNS = ("metrics/accuracy_top1", "metrics/accuracy_top5", "val/loss")  # yolov5 classify's names


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().sum().item()


@torch.no_grad()
def accuracy_metrics(logits_of: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader,
                     device: torch.device) -> dict[str, float]:
    """ACC_COLUMNS over a loader of (images, labels, rows): top-1 and top-5 as fractions, mean cross-entropy."""
    correct1 = correct5 = loss = 0.0
    n = 0
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        logits = logits_of(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct1 += _accuracy(logits, labels, 1)
        correct5 += _accuracy(logits, labels, 5)
        n += len(labels)
    return {"metrics/accuracy_top1": correct1 / n, "metrics/accuracy_top5": correct5 / n, "val/loss": loss / n}


def score_checkpoint(weights: str | Path, data: str | Path, *, split: str = "test", batch_size: int = 256,
                     workers: int = 0, device: str = "cpu") -> dict[str, float]:
    """ACC_COLUMNS of a saved classifier (a best.pt) on DATA/<split>, labeled <class>/<image>.

    val/ chose best.pt, so its val top-1 is the best of many noisy readings; a test/ that chose nothing
    says how good the model is. A CLIP-distilled student is scored through the head it carries.
    """
    model, meta = load_classifier(weights)
    folder = LabeledFolder.scan(Path(data) / split).with_classes(meta["classes"])
    transform = build_transform(meta["imgsz"], meta["mean"], meta["std"], train=False)
    loader = DataLoader(ImageDataset(folder.root, folder.keys, folder.labels, transform), batch_size=batch_size,
                        num_workers=workers)
    target = select_device(device)
    model.to(target)
    logits_of = model
    if "head" in meta:
        from .predict import head_from_checkpoint

        head = head_from_checkpoint(meta["head"]).eval().to(target)
        logits_of = lambda images: head(model(images))  # noqa: E731
    return accuracy_metrics(logits_of, loader, target)


class ClassifyTrainer(Trainer):
    """Supervised training from labels; subclasses change loss_terms() and what the model outputs."""

    loss_names: tuple[str, ...] = ("ce",)
    kind = "train"

    def __init__(self, options: ClassifyOptions):
        super().__init__(options)
        self.best_fitness, self.best_metrics = -1.0, {}  # best top-1 so far
        self.extra_trainable: nn.ModuleDict = nn.ModuleDict()

    def load_resume_state(self, last: Path) -> dict:
        """--resume: every option from the unfinished run's last.pt; its weights and state are restored in setup()."""
        ckpt = read_checkpoint(last)
        state = ckpt.get("resume")
        if state is None:
            raise UserError(f"{last} is a plain classifier checkpoint (a finished run's, or a best.pt); "
                            f"nothing to resume")
        if state["kind"] != self.kind:
            raise UserError(f"{last} was written by `classify {state['kind']}`; resume it with that command, "
                            f"not `classify {self.kind}`")
        self.options = ClassifyOptions.from_dict(state["options"])
        self.options.resume = str(last)
        LOGGER.info(f"Resuming {last.parent.parent} from epoch {ckpt['epoch'] + 2} of {self.options.epochs}")
        return ckpt

    # ---- setup -------------------------------------------------------------------------------------
    def build(self) -> None:
        options = self.options
        if options.epochs < 1 or options.batch_size < 1 or options.imgsz < 1:
            raise UserError("--epochs, --batch-size and --imgsz must be positive")
        seed_everything(options.seed)
        self.build_data()
        self.build_model()
        self.compression = self.setup_compression(  # with the QAT ranges of a resumed run
            self.model, self.train_loader, lambda batch: batch[0].to(self.device),
            quant_state=self.resume_ckpt.get("quant") if self.resume_ckpt else None)
        self.build_extras()
        params = [p for p in list(self.model.parameters()) + list(self.extra_trainable.parameters()) if p.requires_grad]
        optimizer_class = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam,
                           "AdamW": torch.optim.AdamW}.get(options.optimizer)
        if optimizer_class is None:
            raise UserError(f"--optimizer {options.optimizer!r}: choose SGD, Adam or AdamW")
        kw = dict(momentum=0.9, nesterov=True) if options.optimizer == "SGD" else {}
        self.optimizer = optimizer_class(params, lr=options.lr0, weight_decay=options.weight_decay, **kw)
        # What the training forward runs: the student (with its adapters when distilling features), inside
        # DistributedDataParallel under torchrun so that all of their gradients are averaged over the ranks.
        self.train_model = ddp.wrap(self.student_module(), self.dist, self.device)
        # cosine decay to 1% of lr0 over the run, per step (yolov5 classify's default is cosine too)
        total = options.epochs * max(1, len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        self.make_run_dir(Path(options.resume).parent.parent if self.resume_ckpt else None)
        if self.resume_ckpt:
            self.restore(self.resume_ckpt)
            self.resume_ckpt = None
        self.open_run_logger([f"train/{n}" for n in self.loss_names] + list(ACC_COLUMNS) + ["lr/0"])
        LOGGER.info(f"{self.kind}: {self.options.model} -> {self.save_dir}")

    def extra_batches(self, epoch: int):
        """Batches to put beside each training batch (distill's unlabeled images), or None."""
        return None

    def loader(self, dataset, *, train: bool, batch_size: Optional[int] = None) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(self.options.seed)
        sampler = None
        if train and self.dist.enabled:  # each rank a disjoint shard, reshuffled every epoch by set_epoch()
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                         shuffle=True, seed=self.options.seed)
        # a stream beside the main batches (batch_size given) keeps its share exact: no short last batch
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, drop_last=batch_size is not None and len(dataset) >= batch_size,
                          generator=g, num_workers=self.options.workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=self.options.workers > 0)

    def build_data(self) -> None:
        options = self.options
        train_dir, val_dir = split_folders(options.data)
        self.train_folder = LabeledFolder.scan(train_dir)
        self.classes = list(self.train_folder.classes)
        self.val_folder = LabeledFolder.scan(val_dir).with_classes(self.classes)
        self.mean, self.std = self.normalisation()
        self.train_set = self.labeled_dataset(self.train_folder, train=True)
        self.val_set = self.labeled_dataset(self.val_folder, train=False)
        self.train_loader = self.loader(self.train_set, train=True)
        self.val_loader = self.loader(self.val_set, train=False)
        LOGGER.info(f"classes {len(self.classes)}; train {len(self.train_set)} images, val {len(self.val_set)}")

    def normalisation(self):
        return default_normalisation(self.options.model)

    def transform(self, train: bool):
        options = self.options
        return build_transform(options.imgsz, self.mean, self.std, train=train and options.augment,
                               fliplr=options.fliplr)

    def labeled_dataset(self, folder: LabeledFolder, *, train: bool) -> ImageDataset:
        return ImageDataset(folder.root, folder.keys, folder.labels, self.transform(train))

    def num_outputs(self) -> int:
        return len(self.classes)

    def build_model(self) -> None:
        options = self.options
        if self.resume_ckpt:
            self.model = classifier_from_checkpoint(self.resume_ckpt, quantized=False)
        elif options.weights:
            self.model = self.model_from_weights(options.weights)
        else:
            self.model = build_classifier(options.model, self.num_outputs(), imgsz=options.imgsz,
                                          pretrained=options.pretrained or None)
        self.model.to(self.device)

    def model_from_weights(self, path: str) -> nn.Module:
        """A trained student to fine-tune (e.g. with --qat): same outputs as this run, arch from the file."""
        ckpt = read_checkpoint(path)
        if ckpt.get("quant"):
            raise UserError(f"{path} is already quantization-aware trained; start from the FP32 student")
        if ckpt["num_classes"] != self.num_outputs():
            raise UserError(f"{path} has {ckpt['num_classes']} outputs, this run needs {self.num_outputs()}")
        if ckpt["arch"] != self.options.model:
            LOGGER.info(f"--weights {path}: model {ckpt['arch']} (not --model {self.options.model})")
            self.options.model = ckpt["arch"]
        return classifier_from_checkpoint(ckpt)

    def build_extras(self) -> None:
        """Teachers, adapters: nothing for plain training."""

    def student_module(self) -> nn.Module:
        """The module the training forward calls (and DDP wraps): the student, for plain training."""
        return self.model

    # ---- the step ---------------------------------------------------------------------------------
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of the student."""
        return self.model(images)

    def teacher_rows(self, rows: torch.Tensor) -> Optional[torch.Tensor]:
        """The batch's cached teacher outputs (B, D) from the store, if the trainer has one."""
        store = getattr(self, "store", None)
        return store.take(rows).to(self.device, non_blocking=True) if store is not None else None

    def loss_terms(self, images, labels, teacher_rows) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(self.train_model(images), labels,
                                      label_smoothing=self.options.label_smoothing)}

    # ---- the batches (the shared Trainer's loop) --------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        self.extra_trainable.train()
        self.extra_stream = self.extra_batches(epoch)

    def preprocess_batch(self, batch, iteration: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(images, labels, the store's teacher rows) on the device, with the epoch's extra batch beside them."""
        images, labels, rows = batch
        if self.extra_stream is not None:  # unlabeled images beside the labeled ones (labels -1)
            more = next(self.extra_stream)
            images, labels, rows = (torch.cat([a, b]) for a, b in zip((images, labels, rows), more))
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
        return images, labels, self.teacher_rows(rows)

    def training_step(self, batch, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        terms = self.loss_terms(*batch)
        items = torch.tensor([float(terms[n].detach()) for n in self.loss_names], dtype=torch.float64)
        return sum(terms.values()), items

    def backward_and_step(self, loss: torch.Tensor, iteration: int) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.compression.after_step()
        self.scheduler.step()
        return True

    def epoch_row(self, epoch: int, mean_losses: torch.Tensor) -> dict[str, float]:
        if self.dist.enabled:  # the logged training loss is over every rank's images, not rank 0's alone
            mean_losses = mean_losses.clone()
            torch.distributed.all_reduce(mean_losses)
            mean_losses /= self.dist.world_size
        return {**super().epoch_row(epoch, mean_losses), "lr/0": self.optimizer.param_groups[0]["lr"]}

    def evaluate(self) -> dict[str, float]:
        """The model being trained on val/ (score_checkpoint scores a saved one on another split)."""
        self.model.eval()
        return accuracy_metrics(self.logits, self.val_loader, self.device)

    def validate(self, epoch: int) -> dict[str, float]:
        return self.evaluate()

    def fitness(self, metrics: dict[str, float]) -> float:
        return metrics["metrics/accuracy_top1"]

    def is_improvement(self, fitness: float) -> bool:
        return fitness > self.best_fitness or math.isinf(fitness)  # inf: no labeled val, every epoch is best

    # ---- checkpoints and the run -------------------------------------------------------------------
    def checkpoint_meta(self) -> dict:
        return dict(arch=self.options.model, classes=self.classes, imgsz=self.options.imgsz, mean=self.mean,
                    std=self.std)

    def saved_models(self) -> list[nn.Module]:
        return [self.model, self.extra_trainable]

    def save(self, path: Path, epoch: int, *, training_state: bool) -> None:
        # A QAT student is saved plain with its INT8 ranges beside (checkpoint_dict splits them off). The final
        # last.pt is the plain classifier; a run killed before it resumes from the previous one.
        extra = {"sparsity": self.compression.sparsity} if self.compression.sparsity else {}
        if training_state and epoch + 1 < self.options.epochs:
            extra["resume"] = self.resume_state()
        save_classifier(path, self.model, epoch=epoch, metrics=self.epoch_metrics, **self.checkpoint_meta(),
                        **extra)

    def resume_state(self) -> dict:
        """What --resume needs beyond the weights: plain values and tensors only (weights-only loadable)."""
        return {"kind": self.kind, "options": asdict(self.options), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "extra_trainable": self.extra_trainable.state_dict(),
                "best_top1": self.best_fitness, "best_metrics": dict(self.best_metrics),
                "rng": {"torch": torch.get_rng_state(), "loader": self.train_loader.generator.get_state()}}

    def restore(self, ckpt: dict) -> None:
        """Optimizer, scheduler, adapters, best top-1 and RNG as they were after last.pt's epoch."""
        state = ckpt["resume"]
        self.extra_trainable.load_state_dict(state["extra_trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_fitness, self.best_metrics = state["best_top1"], state["best_metrics"]
        torch.set_rng_state(state["rng"]["torch"])
        self.train_loader.generator.set_state(state["rng"]["loader"])
        self.start_epoch = ckpt["epoch"] + 1

    def report_epoch(self, epoch: int, row: dict[str, float]) -> None:
        LOGGER.info(f"epoch {epoch + 1}/{self.options.epochs}: "
                    + "  ".join(f"{k.removeprefix('train/').removeprefix('metrics/')} {v:.4g}"
                                for k, v in row.items()))

    def finish(self) -> dict:
        plot_results(self.run_logger.csv_path)
        LOGGER.info(f"best top-1 {self.best_fitness:.4f}; results in {self.save_dir}")
        return {"save_dir": str(self.save_dir), "best": str(self.best), "last": str(self.last),
                "epoch_seconds": self.epoch_seconds, **self.best_metrics}

    def cleanup(self) -> None:
        """Remove hooks (the sparsity masks' gradient hooks for plain training)."""
        if hasattr(self, "compression"):
            self.compression.remove()

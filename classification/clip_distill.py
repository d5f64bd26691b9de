"""`classify clip-distill`: a CNN student learns an OpenCLIP teacher's image embeddings from a store."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from yolodistill.errors import UserError
from .data import ImageDataset, LabeledFolder, list_images, readable
from .losses import embedding_cosine, embedding_mse, kd_kl_loss, soft_targets
from .trainer import ClassifyTrainer

LOGGER = logging.getLogger("yolodistill")


class ClipDistillTrainer(ClassifyTrainer):
    """A CNN student learns an OpenCLIP teacher's image embeddings (cached in a store), on unlabeled images.

    The student outputs an embedding (D,); the teacher's head (text prompts or linear probe) turns
    either embedding into class logits, so accuracy is measured the way the student will be used.
    """

    kind = "clip-distill"
    LOSSES = ("cosine", "mse", "kl")

    @property
    def loss_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"distill/{self.options.loss}",)

    def build_data(self) -> None:
        from .clip_teacher import load_head_for_store
        from .store import TeacherStore

        options = self.options
        if options.loss not in self.LOSSES:
            raise UserError(f"--loss {options.loss!r}: choose {', '.join(self.LOSSES)}")
        if not options.store or not options.head:
            raise UserError("clip-distill needs --store (from `classify embed --clip`) and --head "
                            "(from `classify text-embed` or `classify probe`)")
        self.store = TeacherStore.open(options.store, kind="embedding")
        self.head = load_head_for_store(options.head, self.store, f"store {options.store}")
        self.head.to(self.device).requires_grad_(False)
        self.classes = list(self.head.classes)
        self.mean, self.std = self.normalisation()
        sources = [Path(s) for s in ([options.source] if isinstance(options.source, str) else options.source) if s] or \
            [Path(self.store.source)]
        sets = []
        for root in sources:
            keys = readable(root, list_images(root), "training folder")
            prefix = self.store.prefix_of(root)
            sets.append(ImageDataset(root, keys, None, self.transform(True),
                                     self.store.rows_of([prefix + k for k in keys])))
        self.train_set = ConcatDataset(sets) if len(sets) > 1 else sets[0]
        self.train_loader = self.loader(self.train_set, train=True)
        self.val_loader = None
        if options.val:
            self.val_folder = LabeledFolder.scan(options.val).with_classes(self.classes)
            self.val_loader = self.loader(self.labeled_dataset(self.val_folder, train=False), train=False)
        LOGGER.info(f"{len(self.train_set)} training images; teacher embeddings from {options.store} "
                    f"(dim {self.store.dim}); {len(self.classes)} classes")

    def num_outputs(self) -> int:
        return self.store.dim

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(images))

    def loss_terms(self, images, labels, teacher_rows) -> dict[str, torch.Tensor]:
        options = self.options
        emb = self.train_model(images)
        if options.loss == "kl":
            probs = soft_targets(self.head(teacher_rows), options.temperature)
            return {"distill/kl": kd_kl_loss(self.head(emb), probs, options.temperature)}
        fn = embedding_cosine if options.loss == "cosine" else embedding_mse
        return {f"distill/{options.loss}": fn(emb, teacher_rows)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_loader is None:  # no labeled images: accuracy unknown, every epoch counts as best
            return {"metrics/accuracy_top1": float("inf"), "metrics/accuracy_top5": float("nan"),
                    "val/loss": float("nan")}
        return super().evaluate()

    def checkpoint_meta(self) -> dict:
        head = self.head
        return dict(arch=self.options.model, classes=self.classes, num_classes=self.store.dim, imgsz=self.options.imgsz,
                    mean=self.mean, std=self.std, teacher=self.store.teacher,
                    head={"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu(),
                          "scale": float(head.scale), "classes": list(head.classes)})

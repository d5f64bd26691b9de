"""`classify distill`: Hinton KD from live teachers (an ensemble when several) or a cached logits store,
optionally with feature KD, and unlabeled folders that get the distillation term only."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from yolodistill.config import LayerPair, parse_layer_pairs
from yolodistill.distiller import DISTILL_FEATURE, DistillationModel, DistillerConfig
from yolodistill.errors import UserError
from yolodistill.image_lists import image_files, unlabeled_only
from yolodistill.training import endless_batches
from .data import IMAGE_SUFFIXES, ImageDataset, LabeledFolder, list_images, readable
from .losses import kd_kl_loss, labeled_cross_entropy, soft_targets
from .models import last_feature_layer
from .trainer import ClassifyTrainer

LOGGER = logging.getLogger("yolodistill")
DISTILL_KD = "distill/kd"


class HintonTerm:
    """The output term of Hinton KD: alpha * T^2 * KL(teacher probabilities at T || student at T) (Hinton et al.
    2015); the teacher output is its (ensemble's) softened probabilities. The (1 - alpha) * CE part is the task's."""

    name = DISTILL_KD

    def __init__(self, temperature: float, alpha: float):
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        return self.alpha * kd_kl_loss(student_logits, teacher_probs, self.temperature)

    def describe(self) -> str:
        return f"{self.alpha:g}*T^2*KL(T={self.temperature:g})"


class KDTrainer(ClassifyTrainer):
    """Hinton KD from live teachers (an ensemble when several) or a logits store, plus optional feature KD."""

    kind = "distill"

    @property
    def loss_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (DISTILL_KD, "ce") + ((DISTILL_FEATURE,) if self.options.d_layers else ())

    def build_data(self) -> None:
        super().build_data()
        options = self.options
        if not (0 <= options.alpha <= 1) or options.temperature <= 0:
            raise UserError("--alpha must be in [0, 1] and --temperature positive")
        if bool(options.t_weights) == bool(options.teacher_store):
            raise UserError("give the teacher as --t_weights CKPT [CKPT ...] or as --teacher-store DIR (one of them)")
        self.store = None
        if options.teacher_store:
            if options.d_layers:
                raise UserError("--d_layers needs live teachers (--t_weights): a store holds logits only")
            self.store = self.open_logits_store(options.teacher_store)
        labeled = self.labeled_dataset(self.train_folder, train=True)
        unlabeled = self.unlabeled_datasets(options.unlabeled)
        self.unlabeled_loader = None
        if options.unlabeled_ratio < 0:
            raise UserError(f"--unlabeled-ratio must be positive (or 0: one dataset), got {options.unlabeled_ratio}")
        if unlabeled and options.unlabeled_ratio > 0:  # a fixed share of every batch, from a stream of their own
            n = max(1, round(options.unlabeled_ratio * self.batch_size))
            self.unlabeled_loader = self.loader(ConcatDataset(unlabeled), train=True, batch_size=n)
            self.train_set = labeled
        else:  # one dataset: each unlabeled image once an epoch, shuffled among the labeled ones
            self.train_set = ConcatDataset([labeled, *unlabeled]) if unlabeled else labeled
        self.train_loader = self.loader(self.train_set, train=True)
        if unlabeled:
            count = sum(len(u) for u in unlabeled)
            mix = (f"{self.unlabeled_loader.batch_size} in every batch" if self.unlabeled_loader
                   else "shuffled among the labeled ones")
            LOGGER.info(f"+ {count} unlabeled images, {mix} (distillation term only)")

    def unlabeled_datasets(self, specs: Sequence[str]) -> list[ImageDataset]:
        """One dataset a spec: a folder (its images, as before), a .txt list or a glob of images without labels.
        Detection's rule: each image once over all specs; a labeled training image is used once, as labeled; a
        validation image is refused."""
        listed = [self._unlabeled_keys(spec) for spec in specs]
        paths = [[str((root / k).resolve()) for k in keys] for root, keys in listed]
        if not listed:
            return []
        train, val = ([f.root / k for k in f.keys] for f in (self.train_folder, self.val_folder))
        kept = set(unlabeled_only(list(dict.fromkeys(p for ps in paths for p in ps)), labeled=train, val=val))
        datasets = []
        for (root, keys), ps in zip(listed, paths):
            mine = []
            for k, p in zip(keys, ps):
                if p in kept:
                    kept.discard(p)  # an image named by two specs is used once
                    mine.append(k)
            if mine:
                keys = readable(root, mine, "unlabeled images")
                datasets.append(ImageDataset(root, keys, None, self.transform(True), self.store_rows(root, keys)))
        return datasets

    @staticmethod
    def _unlabeled_keys(spec: str) -> tuple[Path, list[str]]:
        if Path(spec).is_dir():
            keys = list_images(spec)
            if not keys:
                raise UserError(f"--unlabeled {spec}: no images found")
            return Path(spec), keys
        files = image_files([spec], "--unlabeled", suffixes=[x.lstrip(".") for x in IMAGE_SUFFIXES])
        root = Path(os.path.commonpath([str(Path(f).parent) for f in files]))
        return root, [Path(f).relative_to(root).as_posix() for f in files]

    def extra_batches(self, epoch: int):
        """The unlabeled stream beside every labeled batch (--unlabeled-ratio > 0)."""
        if self.unlabeled_loader is None:
            return None
        return endless_batches(self.unlabeled_loader, self.options.seed, epoch)

    def open_logits_store(self, path: str):
        from .store import TeacherStore

        store = TeacherStore.open(path, kind="logits")
        classes = store.teacher.get("classes")
        if classes != self.classes:
            raise UserError(f"store {path} was built by teachers with classes {classes}, the data has {self.classes}")
        return store

    def store_rows(self, root: Path, keys) -> Optional[list[int]]:
        """Store rows of a folder's images (the folder lies under the store's source folder); None without a store."""
        if self.store is None:
            return None
        prefix = self.store.prefix_of(root)
        return self.store.rows_of([prefix + k for k in keys])

    def labeled_dataset(self, folder: LabeledFolder, *, train: bool) -> ImageDataset:
        if train and getattr(self, "store", None) is not None:
            return ImageDataset(folder.root, folder.keys, folder.labels, self.transform(True),
                                self.store_rows(folder.root, folder.keys))
        return super().labeled_dataset(folder, train=train)

    def build_extras(self) -> None:
        options = self.options
        self.teachers = teacher = None
        if options.t_weights:
            from .teachers import ClassifierTeachers

            self.teachers = ClassifierTeachers(options.t_weights, self.device)
            if self.teachers.classes != self.classes:
                raise UserError(f"teacher classes {self.teachers.classes} differ from the data's {self.classes}")
            teacher = self.live_teacher_probs
        pairs, feature_teacher, teacher_imgsz = (), None, None
        if options.d_layers:  # on the first (or only) teacher
            feature_teacher, teacher_imgsz = self.teachers.members[0], self.teachers.metas[0]["imgsz"]
            pairs = feature_layer_pairs(options.d_layers, self.model, feature_teacher)
        output_term = HintonTerm(options.temperature, options.alpha)
        config = DistillerConfig(output_term=output_term, pairs=pairs, feature_loss=options.feature_loss,
                                 feature_weight=options.f_weight, imgsz=options.imgsz, teacher_imgsz=teacher_imgsz)
        self.distiller = DistillationModel(self.model, teacher, config, feature_teacher=feature_teacher,
                                           device=self.device).attach()
        self.extra_trainable["adapters"] = self.distiller.adapters

    def live_teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        """The teachers' softened probabilities (an ensemble averages its members')."""
        t_logits = self.teachers(images, self.mean, self.std)  # (B, n, C)
        return soft_targets(list(t_logits.unbind(1)), self.options.temperature)

    def loss_terms(self, images, labels, teacher_rows) -> dict[str, torch.Tensor]:
        stored = None
        if self.teachers is None:  # the store's logits of the batch's images
            rows = teacher_rows.view(len(teacher_rows), -1, len(self.classes))
            stored = soft_targets(list(rows.unbind(1)), self.options.temperature)
        logits, terms = self.train_model(images, teacher_output=stored)
        hard = (1 - self.options.alpha) * labeled_cross_entropy(logits, labels)
        return {DISTILL_KD: terms[DISTILL_KD], "ce": hard,
                **({DISTILL_FEATURE: terms[DISTILL_FEATURE]} if DISTILL_FEATURE in terms else {})}

    def student_module(self) -> nn.Module:
        """The student with its adapters and (outside its parameters) the teachers: what DDP wraps."""
        return self.distiller

    def checkpoint_meta(self) -> dict:
        meta = super().checkpoint_meta()
        meta["distill"] = {"temperature": self.options.temperature, "alpha": self.options.alpha,
                           "teachers": (self.teachers.identity if self.teachers is not None else self.store.teacher)}
        return meta

    def cleanup(self) -> None:
        super().cleanup()
        if getattr(self, "distiller", None) is not None:
            self.distiller.remove()


def feature_layer_pairs(spec: Union[str, Sequence[str]], student: nn.Module,
                        teacher: nn.Module) -> tuple[LayerPair, ...]:
    """--d_layers: 'auto' pairs the deepest feature maps; otherwise student_layer:teacher_layer pairs
    (separated by spaces or commas)."""
    tokens = [spec] if isinstance(spec, str) else list(spec)
    if tokens == ["auto"]:
        return (LayerPair(last_feature_layer(student), last_feature_layer(teacher)),)
    return parse_layer_pairs(tokens)

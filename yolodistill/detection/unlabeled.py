"""Images without labels for detection distillation (`yolodistill train --unlabeled`).

They go through yolov5's augmentation like the labeled ones (in mosaics of their own), and every batch
carries `--unlabeled-ratio` of them per labeled image; the trainer gives them the distillation terms only.
Which images count: folders, .txt lists or globs; an image also in the labeled training set is used once, as
labeled; a validation image is refused (it would leak into the evaluation).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .. import yolo_backend as yb
from ..distributed import DistContext
from ..training import endless_batches
from ..errors import UserError
from ..image_lists import unlabeled_only

LOGGER = logging.getLogger("yolodistill")


def select_unlabeled(options, data: dict, *, distilling: bool, labeled: Sequence[str]) -> list[str]:
    """The unlabeled image files of a run (--unlabeled, else the dataset yaml's `unlabeled:`), without the
    labeled ones (warned about); refuses validation images, and unlabeled images a run cannot use (no teacher,
    or a teacher with neither distillation terms nor --pseudo-labels)."""
    specs = list(options.unlabeled) or ([data["unlabeled"]] if isinstance(data.get("unlabeled"), str)
                                        else list(data.get("unlabeled") or []))
    if not specs:
        if options.pseudo_labels:
            raise UserError("--pseudo-labels labels the --unlabeled images: give --unlabeled too")
        return []
    if not 0 <= options.pseudo_labels < 1:
        raise UserError(f"--pseudo-labels is a confidence threshold in (0, 1), got {options.pseudo_labels}")
    if not (distilling or (options.t_weights and options.pseudo_labels)):
        raise UserError("--unlabeled images learn from a teacher: add --t_weights teacher.pt and --d_output or "
                        "--d_feature (its soft outputs), or --pseudo-labels CONF (its boxes)")
    for flag in ("rect", "quad"):  # --quad joins four labeled images into one of twice the side
        if getattr(options, flag):
            raise UserError(f"--unlabeled puts square mosaics of --imgsz beside the labeled images in every batch: "
                            f"drop --{flag}")
    files = yb.image_files(specs, "--unlabeled")
    return unlabeled_only(files, labeled=labeled, val=yb.listed_images(data["val"]))


class UnlabeledImages:
    """The unlabeled images of a run and, for each epoch, an endless stream of their augmented batches."""

    def __init__(self, files: Sequence[str], *, save_dir: Path, labeled_batch: int, ratio: float, imgsz: int,
                 stride: int, hyp: dict, workers: int, seed: int, dist: DistContext):
        if ratio <= 0:
            raise UserError(f"--unlabeled-ratio must be positive, got {ratio}")
        self.ratio, self.labeled_batch = ratio, labeled_batch
        self.per_batch = max(1, round(ratio * labeled_batch))  # per rank, beside each full labeled batch
        listing = _write_listing(Path(save_dir) / "unlabeled.txt", files, dist.rank)
        self.seed = seed
        self.loader = yb.create_unlabeled_loader(str(listing), imgsz, self.per_batch, stride, hyp, workers=workers,
                                                 seed=seed, rank=dist.rank if dist.enabled else -1,
                                                 world_size=dist.world_size)
        self.count = len(self.loader.dataset)
        LOGGER.info(f"unlabeled: {self.count} images, {self.per_batch} in every batch beside {labeled_batch} labeled")

    def share(self, n_labeled: int) -> int:
        """How many unlabeled images go beside a batch of n_labeled: per_batch, or fewer beside the short last
        batch of an epoch, so that an epoch takes `ratio` unlabeled images per labeled one."""
        if n_labeled >= self.labeled_batch:
            return self.per_batch
        return min(self.per_batch, round(self.ratio * n_labeled))

    def stream(self, epoch: int) -> Iterator[torch.Tensor]:
        """uint8 image batches (B, 3, H, W), looping over the images as long as asked. Their order, and with
        --workers >= 1 their augmentation (seeded in the worker processes), depend only on the seed and the
        epoch, so a resumed run sees what the uninterrupted one would have; with --workers 0 the augmentation
        draws from the main process's generators."""
        for imgs, *_ in endless_batches(self.loader, self.seed, epoch):
            yield imgs


def _write_listing(path: Path, files: Sequence[str], rank: int) -> Path:
    """The image list yolov5's dataset reads (every rank writes the same lines; the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{rank}.tmp")
    tmp.write_text("".join(f"{f}\n" for f in files))
    os.replace(tmp, path)
    return path

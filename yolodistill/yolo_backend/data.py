"""yolov5's dataloaders, and what their label scan dropped told on yolodistill's logger."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch.nn as nn

from ..errors import UserError
from ._yolov5 import IMG_FORMATS, yolov5_dataloaders


def create_train_loader(path, imgsz: int, batch_size: int, stride: int, hyp: dict, *, workers: int, seed: int,
                        single_cls: bool = False, cache: Optional[str] = None, rect: bool = False,
                        image_weights: bool = False, quad: bool = False, rank: int = -1):
    """yolov5's augmenting (mosaic) training dataloader and its dataset; rank >= 0 (under torchrun) gives a
    DistributedSampler, each rank a disjoint shard of every epoch."""
    return _create_loader(path, imgsz, batch_size, stride, single_cls, hyp=hyp, augment=True, cache=cache,
                          rect=rect, workers=workers, image_weights=image_weights, quad=quad,
                          prefix="train: ", shuffle=True, seed=seed, rank=rank)


def create_val_loader(path, imgsz: int, batch_size: int, stride: int, hyp: Optional[dict], *, workers: int,
                      single_cls: bool = False, cache: Optional[str] = None, square: bool = False):
    """yolov5's rectangular validation dataloader (as train.py builds it); `square` pads every image to
    imgsz x imgsz, as yolov5's val does for exported models with a fixed input size."""
    return _create_loader(path, imgsz, batch_size, stride, single_cls, hyp=hyp, cache=cache, rect=not square,
                          workers=workers, pad=0.0 if square else 0.5, prefix="val: ")[0]


def _create_loader(path, *args, **kwargs):
    try:
        loader, dataset = yolov5_dataloaders.create_dataloader(path, *args, **kwargs)
    except MemoryError:
        raise
    except Exception as e:  # yolov5 reports unreadable data with bare Exception and AssertionError
        raise UserError(f"cannot load images from {path}: {str(e).splitlines()[0]}") from None
    if kwargs.get("rank", -1) in (-1, 0):
        report_scan(path, dataset, kwargs.get("prefix", ""))
    return loader, dataset


def create_unlabeled_loader(images_txt: str, imgsz: int, batch_size: int, stride: int, hyp: dict, *, workers: int,
                            seed: int, rank: int = -1, world_size: int = 1):
    """yolov5's augmenting training pipeline (mosaic, mixup, perspective, HSV, flips) over images without labels,
    listed one a line in `images_txt`. Label files beside them are ignored: every image is unlabeled, never a
    background image, and a mosaic holds only unlabeled tiles. A plain DataLoader (not yolov5's endless one),
    so its order follows its generator: re-seed `loader.generator` for an order that depends only on the seed
    given (an epoch's, for --resume). Under torchrun each rank reads a disjoint shard."""
    import torch
    from torch.utils.data import DataLoader, distributed
    from yolov5.utils.augmentations import Albumentations

    try:  # built without augmentation (yolov5 refuses to augment a dataset without labels), then switched on
        with _no_label_files():
            dataset = yolov5_dataloaders.LoadImagesAndLabels(images_txt, imgsz, batch_size, augment=False, hyp=hyp,
                                                             stride=int(stride), pad=0.0, prefix="unlabeled: ")
    except Exception as e:  # yolov5 reports unreadable data with bare Exception and AssertionError
        listed = listed_images(images_txt)
        if listed and all(_skip_reason(f, labels=False) != "" for f in listed):  # yolov5 fails on an empty set
            raise UserError(f"none of the {len(listed)} unlabeled images is readable, e.g. {listed[0]}: "
                            f"{_skip_reason(listed[0], labels=False)}") from None
        raise UserError(f"cannot load the unlabeled images: {str(e).splitlines()[0]}") from None
    dataset.augment = dataset.mosaic = True
    dataset.albumentations = Albumentations(size=imgsz)
    if rank in (-1, 0):
        report_scan(images_txt, dataset, "unlabeled: ", labels=False)
    per_rank = -(-len(dataset) // world_size) if rank >= 0 else len(dataset)  # DistributedSampler pads shards
    if per_rank < batch_size:  # drop_last would leave no batch at all
        ranks = f" over {world_size} ranks ({per_rank} a rank)" if rank >= 0 else ""
        raise UserError(f"--unlabeled has {len(dataset)} usable images{ranks}, fewer than the {batch_size} every "
                        f"batch takes{' on each rank' if ranks else ''}: give more images or a lower "
                        f"--unlabeled-ratio")
    sampler = None
    if rank >= 0:
        sampler = distributed.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    collate = yolov5_dataloaders.LoadImagesAndLabels.collate_fn
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                      num_workers=min(workers, batch_size), collate_fn=collate,
                      worker_init_fn=yolov5_dataloaders.seed_worker, generator=generator)


@contextlib.contextmanager
def _no_label_files():
    """yolov5's dataset reads the label file of every image (x.txt beside it, or under labels/ for images/). For
    unlabeled images, point it at paths that cannot exist: a label file beside one (left from another use, or
    malformed) must neither label it nor get it dropped as corrupt; each image then has no labels."""
    real = yolov5_dataloaders.img2label_paths
    nowhere = Path(os.devnull)  # a file, so nothing can exist under it
    yolov5_dataloaders.img2label_paths = lambda files: [str(nowhere / f"{i}.txt") for i, _ in enumerate(files)]
    yolov5_log = logging.getLogger("yolov5")  # its "No labels found ... See <docs>" is no news for unlabeled images
    yolov5_log.addFilter(_drop_no_labels_warning)
    try:
        yield
    finally:
        yolov5_dataloaders.img2label_paths = real
        yolov5_log.removeFilter(_drop_no_labels_warning)


def _drop_no_labels_warning(record: logging.LogRecord) -> bool:
    return "No labels found" not in record.getMessage()


def listed_images(path) -> list[str]:
    """Image files as yolov5's LoadImagesAndLabels lists them: folders recursively, .txt files line by line."""
    import glob

    files: list[str] = []
    for p in map(Path, path if isinstance(path, (list, tuple)) else [path]):
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file():
            parent = str(p.parent) + os.sep
            lines = p.read_text(errors="ignore").strip().splitlines()
            files += [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]
    return sorted(x.replace("/", os.sep) for x in files if x.split(".")[-1].lower() in IMG_FORMATS)


def _skip_reason(im_file: str, labels: bool = True) -> str:
    """Why yolov5's scan dropped an image: its own message, or plainer words when the image does not decode;
    "" for an image it keeps. labels=False: the image alone, as for unlabeled images."""
    from PIL import Image

    if not Path(im_file).is_file():  # a stale line of a .txt image list
        return "file not found"
    try:
        with Image.open(im_file) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - PIL's plugins raise anything on junk (an ImportError of a HEIF plugin, seen)
        return "not a readable image (empty, truncated or not an image file)"
    label = yolov5_dataloaders.img2label_paths([im_file])[0] if labels else str(Path(os.devnull) / "0.txt")
    # yolov5 words a short line among good ones as a numpy error ("inhomogeneous shape"): name the line instead.
    lines = Path(label).read_text(errors="ignore").splitlines() if Path(label).is_file() else []
    for i, line in enumerate(lines, 1):
        n = len(line.split())
        if 0 < n < 5 or n == 6:
            return f"{label} line {i} has {n} numbers, a box label needs 5 (class x_center y_center width height)"
    msg = yolov5_dataloaders.verify_image_label((im_file, label, ""))[-1]
    reason = " ".join(msg.partition("ignoring corrupt image/label: ")[2].split()).replace("[ ", "[")  # numpy pads
    return reason or ("rejected by yolov5's image/label check" if labels else "")


def report_scan(path, dataset, prefix: str = "", labels: bool = True) -> dict:
    """Log, on yolodistill's logger, what yolov5's label scan dropped and how many images train as background.

    yolov5 drops an image whose file or label file is corrupt (wrong column count, coordinates outside
    [0, 1], negative values) and prints why only on its own logger and progress bar; the counts here
    reach the user's log. Returns {"found", "skipped": [image, ...], "background"}. labels=False: images
    without labels (unlabeled ones), which are neither background nor dropped for a label file.
    """
    log = logging.getLogger("yolodistill")
    found = listed_images(path)
    kept = set(dataset.im_files)
    skipped = [f for f in found if f not in kept]
    background = sum(1 for lb in dataset.labels if len(lb) == 0) if labels else 0
    if skipped:
        shown = "; ".join(f"{f}: {_skip_reason(f, labels)}" for f in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        what = "a corrupt image or label file" if labels else "an unreadable image"
        log.warning(f"{prefix}WARNING: skipped {len(skipped)} of {len(found)} images with {what} "
                    f"({shown}{more}); using the other {len(dataset.im_files)}")
    if background:
        log.warning(f"{prefix}WARNING: {background} of {len(dataset.im_files)} images have no labels (empty or "
                    f"missing label file) and count as background images with no objects")
    return {"found": len(found), "skipped": skipped, "background": background}


def autoanchor(dataset, model: nn.Module, *, thr: float, imgsz: int) -> None:
    """yolov5's AutoAnchor: re-fit the anchors to the labels when they fit poorly."""
    from yolov5.utils.autoanchor import check_anchors
    check_anchors(dataset, model=model, thr=thr, imgsz=imgsz)


def reweight_images(dataset, model: nn.Module, maps: np.ndarray, nc: int) -> None:
    """--image-weights: resample the epoch's images towards classes with low mAP (train.py's rule)."""
    import random

    from yolov5.utils.general import labels_to_image_weights
    cw = model.class_weights.cpu().numpy() * (1 - maps) ** 2 / nc
    iw = labels_to_image_weights(dataset.labels, nc=nc, class_weights=cw)
    dataset.indices = random.choices(range(dataset.n), weights=iw, k=dataset.n)


def check_labels(dataset, nc: int, data_path: str) -> None:
    """Class ids of the training labels must be < nc (train.py asserts this)."""
    labels = np.concatenate(dataset.labels, 0) if len(dataset.labels) else np.zeros((0, 5))
    if len(labels) and int(labels[:, 0].max()) >= nc:
        raise UserError(f"label class {int(labels[:, 0].max())} exceeds nc={nc} in {data_path}; "
                        f"class ids must be 0..{nc - 1}")

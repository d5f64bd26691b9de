"""yolov5's parts, imported once: yolov5 imports pkg_resources (deprecated) and a few modules that warn on
import, so the imports are fenced here; and the facts about the installed package."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import yolov5
    import yolov5.val as yolov5_val
    from yolov5.models.yolo import Detect, DetectionModel
    from yolov5.utils import dataloaders as yolov5_dataloaders
    from yolov5.utils.callbacks import Callbacks
    from yolov5.utils.general import (LOGGER, TQDM_BAR_FORMAT, check_img_size, intersect_dicts,
                                      labels_to_class_weights, non_max_suppression, one_cycle, scale_boxes,
                                      xyxy2xywh)
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.metrics import fitness
    from yolov5.utils.plots import Annotator, colors
    from yolov5.utils.torch_utils import EarlyStopping, ModelEMA, de_parallel, smart_optimizer

__all__ = [
    "Annotator", "Callbacks", "ComputeLoss", "Detect", "DetectionModel", "EarlyStopping", "IMG_FORMATS", "LOGGER",
    "ModelEMA", "SAMPLE_IMAGES", "STANDARD_CFGS", "TQDM_BAR_FORMAT", "YOLOV5_CHECKPOINT_ALIASES",
    "YOLOV5_CHECKPOINT_MODULES",
    "YOLOV5_DIR", "YOLOV5_VERSION", "check_img_size", "colors", "de_parallel", "fitness", "intersect_dicts",
    "labels_to_class_weights", "non_max_suppression", "one_cycle", "scale_boxes", "set_yolov5_verbosity",
    "smart_optimizer", "xyxy2xywh", "yolov5_dataloaders", "yolov5_val"
]

YOLOV5_DIR = Path(yolov5.__file__).resolve().parent
YOLOV5_VERSION = yolov5.__version__
# Checkpoints written by the pip package name `yolov5.models.*`; those from the ultralytics repo
# name `models.*` (the pip package puts its root on sys.path so both resolve to the same files).
YOLOV5_CHECKPOINT_MODULES = ("yolov5.models.common.", "yolov5.models.yolo.", "yolov5.models.experimental.",
                             "models.common.", "models.yolo.", "models.experimental.")
# Repo-style names load as the pip package's classes, so isinstance checks hold for both.
YOLOV5_CHECKPOINT_ALIASES = {"models.": "yolov5.models."}
IMG_FORMATS = tuple(yolov5_dataloaders.IMG_FORMATS)
STANDARD_CFGS = tuple(sorted(p.name for p in (YOLOV5_DIR / "models").glob("yolov5*.yaml")))
# The two photos the package ships (bus.jpg, zidane.jpg): real images that are always there, offline.
SAMPLE_IMAGES = tuple(sorted((YOLOV5_DIR / "data" / "images").glob("*.jpg")))


def set_yolov5_verbosity(verbose: bool) -> None:
    """yolov5 logs through its own 'yolov5' logger; quiet it for tests and nested runs."""
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)

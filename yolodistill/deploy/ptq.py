"""Post-training INT8 for `yolodistill export --int8 --data data.yaml`: the student gets the fake quantizers of
--qat (conv inputs and weights, residual adds, concatenations, with the same shared scales), their activation
ranges are set to the max over training images, and the export writes them as Q/DQ nodes.

Why not TensorRT's calibrator: INT8 calibrators are deprecated in TensorRT 10 and gone in 11, while a Q/DQ ONNX
builds the same INT8 engine on both (and with trtexec on a Jetson); and the ranges are then the ones onnxruntime
scores with `yolodistill val --weights best.onnx`, so the INT8 accuracy is measured before anything is built.
Max calibration on 512 images kept a distilled yolov5n within 0.35 mAP50-95 points of FP32 (benchmarks/RESULTS.md,
"INT8: post-training calibration and QAT").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .. import yolo_backend as yb
from ..compress import quant as q
from .deployable import Deployable

LOGGER = logging.getLogger("yolodistill")
CALIBRATION_BATCH = 32


def _first_images(loader, images: int) -> Iterator[torch.Tensor]:
    """Float batches in [0, 1] holding the loader's first `images` images (the last batch cut to fit)."""
    left = images
    for batch in loader:
        if left <= 0:
            return
        imgs = batch[0][:left].float() / 255
        left -= len(imgs)
        yield imgs


def calibrate_detector(model: nn.Module, data: Union[str, Path], *, imgsz: int, stride: int, images: int = 512,
                       workers: int = 2) -> int:
    """Quantize a detector in place (compress.quant with its block rules) and set its activation ranges to the
    max over the first `images` training images of the dataset yaml `data`, letterboxed to imgsz x imgsz without
    augmentation. Returns the images used (fewer if the split holds fewer)."""
    if images < 1:
        raise ValueError(f"calibration needs at least one image, got {images}")
    train = yb.load_data_yaml(data)["train"]
    if q.is_quantized(model):  # ranges of an earlier scheme: recalibrated from scratch
        q.strip_quantizers(model)
    q.quantize_model(model)
    batch = min(CALIBRATION_BATCH, images)
    loader = yb.create_val_loader(train, imgsz, batch, stride, None, workers=workers, square=True)
    used = [0]

    def forward(x: torch.Tensor) -> None:
        used[0] += len(x)
        model(x.to(next(model.parameters()).device))

    q.calibrate(model, _first_images(loader, images), forward)
    q.refresh_weight_ranges(model)
    LOGGER.info(f"INT8 post-training calibration: activation ranges set to the max over {used[0]} training images "
                f"of {data} ({math.ceil(used[0] / batch)} batches of {batch} at {imgsz} px, no augmentation)")
    return used[0]


def calibrate_deployable(dep: Deployable, data: Union[str, Path], *, images: int = 512, workers: int = 2) -> int:
    """calibrate_detector() on an export-ready detector (fused: BatchNorm folding does not move any activation),
    which then exports as a Q/DQ graph; returns the images used. A non-square export size is calibrated at its
    longer side: a per-tensor max hardly depends on the aspect of the letterbox."""
    used = calibrate_detector(dep.model, data, imgsz=max(dep.imgsz), stride=int(dep.metadata["stride"]),
                              images=images, workers=workers)
    dep.quantized, dep.legacy_int8 = True, False
    return used

"""train.py's learning-rate schedule, warmup and multi-scale resizing."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn as nn

from ._yolov5 import one_cycle


def lr_lambda(epochs: int, lrf: float, cos_lr: bool):
    """train.py's LR schedule: cosine (one_cycle) or linear from 1 to lrf."""
    if cos_lr:
        return one_cycle(1, lrf, epochs)
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup_iterations(hyp: dict, batches_per_epoch: int) -> int:
    """train.py's warmup length: max(warmup_epochs of batches, 100); none at all for warmup_epochs 0 (a
    fine-tune), where train.py would still warm up for 100 batches."""
    if hyp["warmup_epochs"] <= 0:
        return -1
    return max(round(hyp["warmup_epochs"] * batches_per_epoch), 100)


def warm_up(optimizer: torch.optim.Optimizer, iteration: int, warmup_iterations: int, hyp: dict, lr_factor: float,
            max_accumulate: float) -> int:
    """train.py's warmup at batch `iteration` of `warmup_iterations`: the bias LR falls from warmup_bias_lr and the
    others rise from 0 to their scheduled value (`lr_factor` of the initial one), momentum rises from
    warmup_momentum; returns the batches to accumulate, rising from 1 to `max_accumulate`."""
    span = [0, warmup_iterations]
    for j, group in enumerate(optimizer.param_groups):
        group["lr"] = np.interp(iteration, span, [hyp["warmup_bias_lr"] if j == 0 else 0.0,
                                                  group["initial_lr"] * lr_factor])
        if "momentum" in group:
            group["momentum"] = np.interp(iteration, span, [hyp["warmup_momentum"], hyp["momentum"]])
    return max(1, np.interp(iteration, span, [1, max_accumulate]).round())


def random_rescale(imgs: torch.Tensor, imgsz: int, stride: int) -> torch.Tensor:
    """--multi-scale: the batch resized to a random multiple of the stride from 0.5 to 1.5 x imgsz."""
    size = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + stride) // stride * stride
    scale = size / max(imgs.shape[2:])
    if scale == 1:
        return imgs
    new_shape = [math.ceil(x * scale / stride) * stride for x in imgs.shape[2:]]
    return nn.functional.interpolate(imgs, size=new_shape, mode="bilinear", align_corners=False)

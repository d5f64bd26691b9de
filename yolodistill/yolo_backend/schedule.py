"""train.py's learning-rate schedule and warmup length."""

from __future__ import annotations

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

"""Validation (yolov5's val.run) and pseudo-labels (a detector's boxes as training targets); detection on frames
is prediction.py's."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._yolov5 import Callbacks, non_max_suppression, xyxy2xywh, yolov5_val
from .plots import enable_plots, own_matplotlib_settings, wait_for_plots


def validate(model: nn.Module, data: dict, dataloader, *, imgsz: int, batch_size: int, save_dir: Path,
             half: bool = False, compute_loss=None, single_cls: bool = False, verbose: bool = False,
             iou_thres: float = 0.6, conf_thres: float = 0.001, plots: bool = False) -> tuple[tuple, np.ndarray]:
    """mAP through yolov5's val.run: ((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAP). `plots`: its
    PR/F1/P/R curves, confusion matrix and val_batch*_labels/pred.jpg in save_dir, as train.py's final val."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)  # val writes results.html there
    if plots:
        enable_plots()
    with warnings.catch_warnings(), own_matplotlib_settings():
        warnings.simplefilter("ignore")
        out = yolov5_val.run(data, batch_size=batch_size, imgsz=imgsz, half=half, model=model,
                             single_cls=single_cls, dataloader=dataloader, save_dir=save_dir, plots=plots,
                             callbacks=Callbacks(), compute_loss=compute_loss, verbose=verbose,
                             iou_thres=iou_thres, conf_thres=conf_thres)
    if plots:
        wait_for_plots()  # val draws its batches in threads: the files exist when this returns
    results, maps = out[0], out[1]
    return tuple(float(x) for x in results), maps


@torch.no_grad()
def pseudo_labels(model: nn.Module, imgs: torch.Tensor, *, conf_thres: float, iou_thres: float = 0.45,
                  first_index: int = 0, max_det: int = 300,
                  classes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A detector's boxes after NMS as training targets (N, 6): image (first_index + its place in `imgs`),
    class, x, y, w, h normalised to the image, as yolov5's dataloader gives labels. `model` in eval mode.
    `classes`: only boxes whose best class is one of these, as yolov5's detect --classes."""
    p = next(model.parameters())
    pred = model(imgs.to(p.dtype))[0]
    h, w = imgs.shape[2:]
    gain = torch.tensor([w, h, w, h], device=imgs.device, dtype=torch.float32)
    rows, keep = [], None if classes is None else list(classes)
    for j, det in enumerate(non_max_suppression(pred.float(), conf_thres, iou_thres, classes=keep, max_det=max_det)):
        if len(det):
            xywh = xyxy2xywh(det[:, :4].float()) / gain
            index = torch.full((len(det), 1), float(first_index + j), device=imgs.device)
            rows.append(torch.cat([index, det[:, 5:6].float(), xywh], 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=imgs.device)

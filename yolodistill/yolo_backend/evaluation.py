"""Validation (yolov5's val.run) and detection on image files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ._yolov5 import (IMG_FORMATS, LOGGER, Annotator, Callbacks, colors, de_parallel, non_max_suppression,
                      scale_boxes, xyxy2xywh, yolov5_val)
from .models import max_stride


def validate(model: nn.Module, data: dict, dataloader, *, imgsz: int, batch_size: int, save_dir: Path,
             half: bool = False, compute_loss=None, single_cls: bool = False, verbose: bool = False,
             iou_thres: float = 0.6, conf_thres: float = 0.001) -> tuple[tuple, np.ndarray]:
    """mAP through yolov5's val.run: ((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAP)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)  # val writes results.html there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = yolov5_val.run(data, batch_size=batch_size, imgsz=imgsz, half=half, model=model,
                             single_cls=single_cls, dataloader=dataloader, save_dir=save_dir, plots=False,
                             callbacks=Callbacks(), compute_loss=compute_loss, verbose=verbose,
                             iou_thres=iou_thres, conf_thres=conf_thres)
    results, maps = out[0], out[1]
    return tuple(float(x) for x in results), maps


def image_sources(source: str | Path) -> list[Path]:
    """Image files from a file, a folder, a glob or a .txt list."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
    elif p.is_file() and p.suffix == ".txt":
        files = [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path().glob(str(source))) if any(c in str(source) for c in "*?[") else []
    files = [f for f in files if f.suffix[1:].lower() in IMG_FORMATS]
    if not files:
        raise UserError(f"no images found at {source}")
    return files


@torch.no_grad()
def detect_images(model: nn.Module, files: Sequence[Path], *, imgsz: int, device: torch.device, save_dir: Path,
                  conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000, save_txt: bool = False,
                  save_conf: bool = False, save_img: bool = True, line_width: int = 2) -> list[dict]:
    """Run detection on image files; draws boxes with OpenCV (no font download) and returns per-image counts."""
    import cv2
    from yolov5.utils.augmentations import letterbox

    stride = max_stride(model)
    names = de_parallel(model).names
    model.eval()
    save_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    summary = []
    for f in files:
        im0 = cv2.imread(str(f))
        if im0 is None:
            LOGGER.warning(f"WARNING: skipping unreadable image {f}")
            continue
        im = letterbox(im0, imgsz, stride=stride, auto=True)[0].transpose((2, 0, 1))[::-1]  # HWC BGR -> CHW RGB
        im = torch.from_numpy(np.ascontiguousarray(im)).to(device).float()[None] / 255
        pred = non_max_suppression(model(im)[0], conf_thres, iou_thres, max_det=max_det)[0]
        pred[:, :4] = scale_boxes(im.shape[2:], pred[:, :4], im0.shape).round()
        annotator = Annotator(im0, line_width=line_width, example=str(names), pil=False)
        lines = []
        for *xyxy, conf, cls in reversed(pred.tolist()):
            c = int(cls)
            annotator.box_label(xyxy, f"{names[c]} {conf:.2f}", color=colors(c, True))
            gn = torch.tensor(im0.shape)[[1, 0, 1, 0]]
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            row = (c, *xywh, conf) if save_conf else (c, *xywh)  # yolov5: the confidence only with --save-conf
            lines.append(("%g " * len(row)).rstrip() % row)
        if save_img:
            cv2.imwrite(str(save_dir / f.name), annotator.result())
        if save_txt:
            (save_dir / "labels" / f"{f.stem}.txt").write_text("".join(line + "\n" for line in lines))
        summary.append({"image": str(f), "detections": len(lines)})
    return summary


@torch.no_grad()
def pseudo_labels(model: nn.Module, imgs: torch.Tensor, *, conf_thres: float, iou_thres: float = 0.45,
                  first_index: int = 0, max_det: int = 300) -> torch.Tensor:
    """A detector's boxes after NMS as training targets (N, 6): image (first_index + its place in `imgs`),
    class, x, y, w, h normalised to the image, as yolov5's dataloader gives labels. `model` in eval mode."""
    p = next(model.parameters())
    pred = model(imgs.to(p.dtype))[0]
    h, w = imgs.shape[2:]
    gain = torch.tensor([w, h, w, h], device=imgs.device, dtype=torch.float32)
    rows = []
    for j, det in enumerate(non_max_suppression(pred.float(), conf_thres, iou_thres, max_det=max_det)):
        if len(det):
            xywh = xyxy2xywh(det[:, :4].float()) / gain
            index = torch.full((len(det), 1), float(first_index + j), device=imgs.device)
            rows.append(torch.cat([index, det[:, 5:6].float(), xywh], 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=imgs.device)

"""Detection on one frame with yolov5's own letterbox, NMS, box scaling, drawing and label format: what
`yolodistill detect` needs from yolov5 (the frames come from yolodistill.media, the loop is
detection/inference.py's)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._yolov5 import Annotator, colors, non_max_suppression, scale_boxes, xyxy2xywh
from yolov5.utils.augmentations import letterbox  # after _yolov5, which fences yolov5's import-time warnings


def prepare_image(image: np.ndarray, size: tuple[int, int], *, stride: int, auto: bool,
                  device: torch.device) -> torch.Tensor:
    """A BGR (H, W, 3) uint8 frame as the model's input (1, 3, h, w) RGB float in [0, 1], letterboxed to `size`
    (h, w) as yolov5's detect.py does: `auto` pads only to a stride multiple (PyTorch), else to exactly `size`
    (a fixed-size ONNX file or TensorRT engine)."""
    im = letterbox(image, size, stride=stride, auto=auto)[0].transpose((2, 0, 1))[::-1]  # HWC BGR -> CHW RGB
    return torch.from_numpy(np.ascontiguousarray(im)).to(device).float()[None] / 255


@torch.no_grad()
def detect_boxes(model: nn.Module, im: torch.Tensor, image_shape: Sequence[int], *, conf_thres: float = 0.25,
                 iou_thres: float = 0.45, classes: Optional[Sequence[int]] = None, agnostic: bool = False,
                 max_det: int = 1000) -> torch.Tensor:
    """Boxes (n, 6) in the original frame's pixels: x1, y1, x2, y2, confidence, class, after yolov5's NMS.

    `model(im)` may be a DetectionModel's (pred, raw) tuple or an exported model's pred tensor (B, N, 5 + nc):
    non_max_suppression takes either."""
    boxes = non_max_suppression(model(im), conf_thres, iou_thres, classes=list(classes) if classes else None,
                                agnostic=agnostic, max_det=max_det)[0]
    boxes[:, :4] = scale_boxes(im.shape[2:], boxes[:, :4], image_shape).round()
    return boxes


def draw_boxes(image: np.ndarray, boxes: torch.Tensor, names, *, line_width: int = 3, hide_labels: bool = False,
               hide_conf: bool = False) -> np.ndarray:
    """`image` with the boxes drawn on it, labelled as yolov5's detect.py labels them (OpenCV text: PIL would
    download a font)."""
    annotator = Annotator(image, line_width=line_width, example=str(names), pil=False)
    for *xyxy, conf, cls in reversed(boxes.tolist()):
        c = int(cls)
        label = None if hide_labels else (f"{names[c]}" if hide_conf else f"{names[c]} {conf:.2f}")
        annotator.box_label(xyxy, label, color=colors(c, True))
    return annotator.result()


def label_lines(boxes: torch.Tensor, image_shape: Sequence[int], *, save_conf: bool = False) -> list[str]:
    """yolov5's --save-txt rows: `class x y w h` normalised to the frame (reusable as labels), `conf` appended
    only with --save-conf; in yolov5's order (lowest confidence first)."""
    gain = torch.tensor(image_shape)[[1, 0, 1, 0]].float()
    lines = []
    for row in reversed(boxes.cpu().tolist()):
        xywh = (xyxy2xywh(torch.tensor(row[:4]).view(1, 4)) / gain).view(-1).tolist()
        values = (int(row[5]), *xywh, row[4]) if save_conf else (int(row[5]), *xywh)
        lines.append(("%g " * len(values)).rstrip() % values)
    return lines

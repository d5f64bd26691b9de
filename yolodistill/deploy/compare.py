"""What two runtimes of one exported model are compared on, and how a detector's boxes are matched: shared by the
ONNX parity check (onnx_parity.py) and the engine check (engine_parity.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError


def sample_images(hw: tuple[int, int], *, files: Sequence[Path] = (), count: int = 4) -> tuple[list[np.ndarray], str]:
    """Up to `count` real images resized to (H, W) as (1, 3, H, W) float32 RGB in [0, 1], and where they came from:
    `files` when given, else the two photos the yolov5 package ships (bus.jpg, zidane.jpg)."""
    import cv2

    from ..yolo_backend import SAMPLE_IMAGES

    paths = list(files)[:count] or list(SAMPLE_IMAGES)
    images = []
    for p in paths:
        im = cv2.imread(str(p))
        if im is None:
            continue
        im = cv2.resize(im, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)
        images.append(np.ascontiguousarray(im, dtype=np.float32)[None] / 255)
    if not images:
        raise UserError(f"none of {', '.join(str(p) for p in paths)} could be read to compare the runtimes on")
    return images, ("the given images" if files else "yolov5's sample images")


def normalise(images: list[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """A classifier's input: pixels in [0, 1] normalised by its mean and std."""
    m, s = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (mean, std))
    return [(x - m) / s for x in images]


def matched_boxes(want: np.ndarray, have: np.ndarray, iou_thres: float = 0.5) -> int:
    """How many boxes of `want` ((n, 6): x1 y1 x2 y2 conf class) have a same-class box in `have` at IoU >= iou_thres,
    each box of `have` used once (greedy, highest IoU first)."""
    if not len(want) or not len(have):
        return 0
    iou = box_iou(want[:, :4], have[:, :4]) * (want[:, None, 5] == have[None, :, 5])
    matched = 0
    while iou.size and iou.max() >= iou_thres:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        matched += 1
        iou[i, :], iou[:, j] = 0, 0
    return matched


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(2)
    area = lambda r: np.clip(r[:, 2:] - r[:, :2], 0, None).prod(1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detector_nms(raw: np.ndarray) -> list[np.ndarray]:
    """yolov5's NMS at detect.py's thresholds on a raw (B, N, 5 + nc) output, per image as (n, 6) numpy arrays."""
    import torch

    from ..yolo_backend import non_max_suppression

    return [d.numpy() for d in non_max_suppression(torch.from_numpy(raw.astype(np.float32)), 0.25, 0.45)]

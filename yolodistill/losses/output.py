"""Output distillation between student and teacher raw detection heads: objectness-weighted MSE of the
logits (`mse`), the same with the boxes compared by CIoU (`mse_ciou`), or the teacher's outputs as soft targets
of yolov5's own loss forms (`kl`)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import OUTPUT_LOSSES

# mse: Mehta & Ozturk, "Object detection at 200 frames per second" (2018), as the Adlik yolov5 fork implements
#      it: per-element MSE of the logits weighted by the teacher's objectness probability, averaged over every
#      cell. Its box part is a small share of the term on trained models (small logit differences, on the few cells
#      with objects, averaged over all of them, times the small box gain: benchmarks/output_parts.py), so it
#      teaches classes and objectness and next to nothing about where the boxes are.
# kl: each part in the form and on the scale of yolov5's own loss term, with the teacher's outputs as targets:
#     objectness as binary KL on every cell (the teacher's "this clutter is not an object" is taught too);
#     classes as binary KL and boxes as 1 - CIoU of the decoded boxes (yolov5's box loss), both averaged over
#     the cells weighted by the teacher's objectness, as yolov5 averages them over the cells that hold objects.
# mse_ciou: mse's objectness and classes, kl's boxes; the default, since it teaches both where objects are and
#     where their boxes are (why, with the figures: docs/training.md#output-loss).
CIOU_BOXES = ("kl", "mse_ciou")
MIN_OBJECT_MASS = 1.0  # a level where the teacher sees less than one object's worth is averaged as if it saw one:
#                         faint background cells are never blown up into a whole object's loss
BOX_MIN_OBJECTNESS = 1e-3  # CIoU is computed only on cells where the teacher's objectness reaches this. The
#   weight makes the other cells' share negligible anyway, and CIoU on every cell made a distillation step
#   markedly slower (figures: docs/training.md#the-ciou-cut). Each skipped cell would add at most this weight
#   times its 1 - CIoU (< 3) to a sum divided by a mass >= 1. (On CUDA the boolean selection waits for the GPU
#   once per level and step: small beside a step.)


def binary_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Elementwise KL(teacher || student) of Bernoulli probabilities given as logits: >= 0, and exactly 0
    where the two logits are equal (the teacher's entropy is subtracted by the same computation)."""
    target = teacher_logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, target, reduction="none"))


def decode_boxes(raw: Tensor, anchors: Tensor) -> Tensor:
    """xyxy boxes in grid units, relative to their cell, from raw logits (B, A, H, W, 5 + nc) and the level's
    anchors (A, 2) in grid units: yolov5's decode (Detect, ComputeLoss) without the cell offset, which a
    student's and a teacher's box at the same cell share and IoU does not see."""
    return _decode(raw, anchors.view(1, -1, 1, 1, 2).to(raw))


def _decode(raw: Tensor, cell_anchors: Tensor) -> Tensor:
    """decode_boxes with the anchors already given per cell (or broadcastable to the cells of `raw`)."""
    xy = raw[..., :2].sigmoid() * 2 - 0.5
    wh = (raw[..., 2:4].sigmoid() * 2) ** 2 * cell_anchors
    return torch.cat((xy - wh / 2, xy + wh / 2), -1)


CIOU_EPS = 1e-7  # as yolov5's bbox_iou and torchvision's complete_box_iou_loss


def ciou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Elementwise 1 - CIoU of xyxy boxes (N, 4): torchvision's complete_box_iou_loss, with yolov5's eps added to
    the heights in the aspect-ratio term as well. torchvision's divides width by height bare: for a box
    of zero height (the height rounds to 0 beside the box's position once its logit is below about -9) its
    value stays finite while its gradient is NaN, which a training step would write into every weight."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    w, h, wg, hg = x2 - x1, y2 - y1, x2g - x1g, y2g - y1g
    inter = ((torch.min(x2, x2g) - torch.max(x1, x1g)).clamp_min(0)
             * (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp_min(0))
    iou = inter / (w * h + wg * hg - inter + CIOU_EPS)
    diagonal = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (torch.max(y2, y2g) - torch.min(y1, y1g)) ** 2
    centres = ((x1 + x2 - x1g - x2g) ** 2 + (y1 + y2 - y1g - y2g) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(wg / (hg + CIOU_EPS)) - torch.atan(w / (h + CIOU_EPS))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + CIOU_EPS)
    return 1 - iou + centres / (diagonal + CIOU_EPS) + alpha * v


def weighted_ciou_sum(s: Tensor, t: Tensor, w: Tensor, anchors: Tensor) -> Tensor:
    """Sum over the cells of (1 - CIoU of the decoded student and teacher boxes) x the teacher's objectness `w`
    (B, A, H, W), on the cells where `w` >= BOX_MIN_OBJECTNESS only (why: at the constant)."""
    cells = w >= BOX_MIN_OBJECTNESS
    cell_anchors = anchors.to(s).view(1, -1, 1, 1, 2).expand(*w.shape, 2)[cells]
    ciou = ciou_loss(_decode(s[cells], cell_anchors), _decode(t[cells], cell_anchors))
    return (ciou * w[cells]).sum()


def output_distillation_loss(student_raw: Sequence[Tensor], teacher_raw: Sequence[Tensor], nc: int,
                             box_gain: float, obj_gain: float, cls_gain: float, kind: str = "mse",
                             anchors: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gain-scaled (lbox, lobj, lcls), 0-dim float32, from per-level raw logits (B, A, H, W, 5 + nc);
    `kind` one of OUTPUT_LOSSES; `anchors` per level (A, 2) in grid units, which `kl` and `mse_ciou` need to
    decode boxes."""
    if len(student_raw) != len(teacher_raw):
        raise ValueError(f"output distillation: student has {len(student_raw)} detection levels, "
                         f"teacher has {len(teacher_raw)}")
    if len(student_raw) == 0:
        raise ValueError("output distillation: no detection levels given")
    if kind not in OUTPUT_LOSSES:
        raise ValueError(f"output distillation: unknown loss {kind!r}; one of {', '.join(OUTPUT_LOSSES)}")
    if kind in CIOU_BOXES and (anchors is None or len(anchors) != len(student_raw)):
        raise ValueError(f"output distillation {kind} compares decoded boxes: it needs the anchors of every level")
    zero = student_raw[0].new_zeros((), dtype=torch.float32)
    lbox, lobj, lcls = zero, zero, zero
    for i, (s, t) in enumerate(zip(student_raw, teacher_raw)):
        # Full-shape check, not just the last dim: broadcasting mismatched grids would silently
        # compare unrelated cells.
        if s.shape != t.shape:
            raise ValueError(f"output distillation level {i}: student {tuple(s.shape)} vs teacher "
                             f"{tuple(t.shape)}; both models need the same classes, anchors and strides")
        if s.shape[-1] != 5 + nc:
            raise ValueError(f"output distillation level {i}: last dim {s.shape[-1]} is not 5 + nc = {5 + nc}")
        # float32: the teacher may run in fp16 under autocast, and squared logits overflow there
        s, t = s.float(), t.detach().float()
        # Teacher confidence as weight: background cells, where the teacher's box and class logits
        # are meaningless, contribute almost nothing.
        w = t[..., 4].sigmoid()
        if kind in CIOU_BOXES:  # (kl among them: its classes are averaged over the same mass)
            mass = w.sum().clamp_min(MIN_OBJECT_MASS)
            lbox = lbox + weighted_ciou_sum(s, t, w, anchors[i]) / mass
        else:
            lbox = lbox + ((s[..., :4] - t[..., :4]).pow(2) * w[..., None]).mean()
        # with one class the class logit carries no information (yolov5 skips it too)
        if kind == "kl":
            lobj = lobj + binary_kl(s[..., 4], t[..., 4]).mean()
            if nc > 1:
                lcls = lcls + (binary_kl(s[..., 5:], t[..., 5:]).mean(-1) * w).sum() / mass
        else:
            lobj = lobj + ((s[..., 4] - t[..., 4]).pow(2) * w).mean()
            if nc > 1:
                lcls = lcls + ((s[..., 5:] - t[..., 5:]).pow(2) * w[..., None]).mean()
    return lbox * box_gain, lobj * obj_gain, lcls * cls_gain

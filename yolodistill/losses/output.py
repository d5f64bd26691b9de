"""Output distillation: objectness-weighted MSE between student and teacher raw detection heads."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def output_distillation_loss(student_raw: Sequence[Tensor], teacher_raw: Sequence[Tensor], nc: int,
                             box_gain: float, obj_gain: float,
                             cls_gain: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gain-scaled (lbox, lobj, lcls), 0-dim float32, from per-level raw logits (B, A, H, W, 5 + nc)."""
    # Mehta & Ozturk, "Object detection at 200 frames per second" (2018), as the Adlik yolov5 fork
    # implements it: per-element MSE weighted by the teacher's objectness probability.
    if len(student_raw) != len(teacher_raw):
        raise ValueError(f"output distillation: student has {len(student_raw)} detection levels, "
                         f"teacher has {len(teacher_raw)}")
    if len(student_raw) == 0:
        raise ValueError("output distillation: no detection levels given")
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
        lbox = lbox + ((s[..., :4] - t[..., :4]).pow(2) * w[..., None]).mean()
        lobj = lobj + ((s[..., 4] - t[..., 4]).pow(2) * w).mean()
        if nc > 1:  # with one class the class logit carries no information (yolov5 skips it too)
            lcls = lcls + ((s[..., 5:] - t[..., 5:]).pow(2) * w[..., None]).mean()
    return lbox * box_gain, lobj * obj_gain, lcls * cls_gain

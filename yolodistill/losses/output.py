"""Output distillation between student and teacher raw detection heads: objectness-weighted MSE of the
logits (`mse`), or binary KL of the probabilities (`kl`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import OUTPUT_LOSSES

# mse: Mehta & Ozturk, "Object detection at 200 frames per second" (2018), as the Adlik yolov5 fork implements
#      it: per-element MSE of the logits weighted by the teacher's objectness probability.
# kl: objectness on every cell, so the teacher's "this clutter is not an object" is taught too; classes where
#     the teacher sees an object, as probabilities (a logit difference far beyond the sigmoid's range costs
#     what it changes, not its square); boxes as in mse.


def binary_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Elementwise KL(teacher || student) of Bernoulli probabilities given as logits: >= 0, and exactly 0
    where the two logits are equal (the teacher's entropy is subtracted by the same computation)."""
    target = teacher_logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, target, reduction="none"))


def output_distillation_loss(student_raw: Sequence[Tensor], teacher_raw: Sequence[Tensor], nc: int,
                             box_gain: float, obj_gain: float, cls_gain: float,
                             kind: str = "mse") -> tuple[Tensor, Tensor, Tensor]:
    """Gain-scaled (lbox, lobj, lcls), 0-dim float32, from per-level raw logits (B, A, H, W, 5 + nc);
    `kind` one of OUTPUT_LOSSES."""
    if len(student_raw) != len(teacher_raw):
        raise ValueError(f"output distillation: student has {len(student_raw)} detection levels, "
                         f"teacher has {len(teacher_raw)}")
    if len(student_raw) == 0:
        raise ValueError("output distillation: no detection levels given")
    if kind not in OUTPUT_LOSSES:
        raise ValueError(f"output distillation: unknown loss {kind!r}; one of {', '.join(OUTPUT_LOSSES)}")
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
        if kind == "kl":
            lobj = lobj + binary_kl(s[..., 4], t[..., 4]).mean()
        else:
            lobj = lobj + ((s[..., 4] - t[..., 4]).pow(2) * w).mean()
        if nc > 1:  # with one class the class logit carries no information (yolov5 skips it too)
            differ = binary_kl(s[..., 5:], t[..., 5:]) if kind == "kl" else (s[..., 5:] - t[..., 5:]).pow(2)
            lcls = lcls + (differ * w[..., None]).mean()
    return lbox * box_gain, lobj * obj_gain, lcls * cls_gain

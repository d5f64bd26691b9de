"""YOLOv5 student and teacher as a DistillationModel: the output term that compares their heads, the layer pairs
fed to Detect, the checks that make the comparison meaningful, and the loss names a detection run logs."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from .. import yolo_backend as yb
from ..config import DistillConfig, LayerPair
from ..distiller import DISTILL_FEATURE, DistillationModel, DistillerConfig
from ..errors import UserError
from ..losses import output_distillation_loss
from .class_map import TeacherClassMap
from .teacher import FrozenTeacher

# Loss names are declared here once; the progress bar, results.csv, TensorBoard and results_all.png
# all take their columns from them.
TASK_TERMS = ("box_loss", "obj_loss", "cls_loss")
DISTILL_OUTPUT = "distill/output"


def loss_names(config: DistillConfig) -> tuple[str, ...]:
    """Every loss term logged for a detection run with this config, in display order."""
    return TASK_TERMS + ((DISTILL_OUTPUT,) if config.output else ()) + ((DISTILL_FEATURE,) if config.feature else ())


class YoloOutputTerm:
    """Detection: the student's and the teacher's raw head outputs compared by `kind` (losses.OUTPUT_LOSSES:
    objectness-weighted MSE, or yolov5's loss forms with the teacher as target), box/obj/cls parts scaled by
    yolov5's loss gains, times `weight`. `anchors`: per level (A, 2) in grid units, shared by student and
    teacher (check_output_compatible); `kl` decodes boxes with them."""

    name = DISTILL_OUTPUT

    def __init__(self, nc: int, gains: dict, weight: float, kind: str = "mse",
                 anchors: Optional[torch.Tensor] = None):
        self.nc, self.weight, self.kind = nc, weight, kind
        self.gains = {k: float(gains[k]) for k in ("box", "obj", "cls")}
        # a copy: fixed once training starts (autoanchor runs before), and the term must not hold the model
        self.anchors = None if anchors is None else [a.detach().float().clone() for a in anchors]

    def __call__(self, student_out: Any, teacher_raw: Sequence[torch.Tensor]) -> torch.Tensor:
        student_raw = yb.raw_head_outputs(student_out)  # a model in eval mode also returns its decoded boxes
        if self.anchors is not None and self.anchors[0].device != student_raw[0].device:
            self.anchors = [a.to(student_raw[0].device) for a in self.anchors]  # once, not a copy every step
        lbox, lobj, lcls = output_distillation_loss(student_raw, teacher_raw, self.nc, self.gains["box"],
                                                    self.gains["obj"], self.gains["cls"], kind=self.kind,
                                                    anchors=self.anchors)
        return self.weight * (lbox + lobj + lcls)

    def describe(self) -> str:
        return f"{self.weight:g}*output_{self.kind}"


def default_layer_pairs(student: nn.Module, teacher: nn.Module) -> tuple[LayerPair, ...]:
    """Pair the layers that feed Detect, level by level (P3-P3, P4-P4, P5-P5)."""
    s_layers, t_layers = yb.detect_input_layers(student), yb.detect_input_layers(teacher)
    if len(s_layers) != len(t_layers):
        raise UserError(f"student has {len(s_layers)} detection levels, teacher {len(t_layers)}: "
                        f"pass --d_layers explicitly")
    return tuple(LayerPair(s, t) for s, t in zip(s_layers, t_layers))


def check_output_compatible(student: nn.Module, teacher: nn.Module,
                            class_map: Optional[TeacherClassMap] = None) -> None:
    """Output distillation compares heads cell by cell: nc (the teacher's after its `class_map`), levels, anchors
    and strides must match."""
    s, t = yb.head_layout(student), yb.head_layout(teacher)
    if class_map is not None:
        t["nc"] = class_map.student_nc
    for key in ("nc", "nl", "na"):
        if s[key] != t[key]:
            raise UserError(f"output distillation needs the same {key} in student and teacher: "
                            f"student {key}={s[key]}, teacher {key}={t[key]}")
    if s["stride"].shape != t["stride"].shape or not torch.equal(s["stride"], t["stride"]):
        raise UserError(f"output distillation needs the same strides: student {s['stride'].tolist()}, "
                        f"teacher {t['stride'].tolist()}")
    if not torch.allclose(s["anchors"], t["anchors"], atol=1e-2):
        raise UserError("output distillation needs the same anchors in student and teacher: student "
                        f"{s['anchors'].view(s['nl'], -1).round().tolist()} vs teacher "
                        f"{t['anchors'].view(t['nl'], -1).round().tolist()} (build the student from a "
                        "cfg to inherit the teacher's anchors, or use a teacher trained with the same ones)")


def detection_distiller(student: nn.Module, teacher: FrozenTeacher, config: DistillConfig, *, gains: dict,
                        imgsz: int, device: torch.device) -> DistillationModel:
    """The DistillationModel of a YOLOv5 student and teacher, as `config` asks (output, features or both)."""
    output_term = None
    if config.output:
        check_output_compatible(student, teacher.model, teacher.class_map)
        output_term = YoloOutputTerm(yb.num_classes(student), gains, config.output_weight, config.output_loss,
                                     anchors=yb.detect_head(student).anchors)
    pairs = (config.layers or default_layer_pairs(student, teacher.model)) if config.feature else ()
    distiller_config = DistillerConfig(output_term=output_term, pairs=pairs, feature_loss=config.feature_loss,
                                       feature_loss_kwargs=config.feature_loss_kwargs,
                                       feature_weight=config.feature_weight, imgsz=imgsz)
    return DistillationModel(student, teacher, distiller_config, feature_teacher=teacher.model, device=device)

"""The frozen teacher: loaded once, never trained, never in train mode, run without gradients; a teacher of more
classes than the student speaks in the student's classes (class_map.py)."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .. import yolo_backend as yb
from ..errors import UserError
from .class_map import Names, TeacherClassMap, resolve_class_map

LOGGER = logging.getLogger("yolodistill")


class FrozenTeacher(nn.Module):
    """Wraps a YOLOv5 model so that it stays in eval mode (BN statistics fixed) and runs under no_grad; with a
    `class_map`, its outputs and pseudo-labels are in the student's classes (features stay the model's own)."""

    def __init__(self, model: nn.Module, *, half: bool = False, class_map: Optional[TeacherClassMap] = None):
        super().__init__()
        if class_map is not None and class_map.teacher_nc != yb.num_classes(model):
            raise ValueError(f"class map for a teacher of {class_map.teacher_nc} classes, the model has "
                             f"{yb.num_classes(model)}")
        self.model = model.half() if half else model.float()
        self.half = half
        self.class_map = class_map
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # A parent's .train() must not switch the teacher's BatchNorm to batch statistics.
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level head outputs (B, A, H, W, 5 + nc), nc the student's under a class map; FP16 on CUDA
        when `half`."""
        imgs = imgs.half() if self.half else imgs.float()
        raw = yb.forward_raw(self.model, imgs)
        return raw if self.class_map is None else self.class_map(raw)

    @torch.no_grad()
    def pseudo_labels(self, imgs: torch.Tensor, *, conf_thres: float, first_index: int = 0) -> torch.Tensor:
        """The teacher's boxes after NMS as training targets (N, 6): image (first_index + its place in `imgs`),
        class, x, y, w, h normalised to the image, as yolov5's dataloader gives labels. Under a class map, the
        boxes whose best class is a mapped one (yolov5's NMS `classes`), with the student's class."""
        if self.class_map is None:
            return yb.pseudo_labels(self.model, imgs, conf_thres=conf_thres, first_index=first_index)
        boxes = yb.pseudo_labels(self.model, imgs, conf_thres=conf_thres, first_index=first_index,
                                 classes=self.class_map.teacher_classes)
        boxes[:, 1] = self.class_map.student_classes(boxes[:, 1])
        return boxes

    @property
    def num_classes(self) -> int:
        """The classes its outputs have: the student's under a class map."""
        return yb.num_classes(self.model) if self.class_map is None else self.class_map.student_nc


def load_teacher(weights: str, *, cfg: str = "", nc: int | None = None, device: torch.device,
                 half: bool = False, trust: bool = False, student_names: Optional[Names] = None,
                 class_pairs: Sequence[str] = (), class_map: Optional[TeacherClassMap] = None) -> FrozenTeacher:
    """Teacher from its checkpoint; with `cfg`, its weights go into a model built from that yaml. With
    `student_names` (the dataset's), its classes are matched to them by name and `class_pairs` (--t_classes:
    resolve_class_map); a `class_map` (a resumed run's) is taken as it is."""
    ckpt = yb.load_detection_checkpoint(weights, trust=trust)
    model = yb.checkpoint_model(ckpt)
    if cfg:
        built = yb.build_model(cfg, yb.num_classes(model))
        state = model.state_dict()
        missing = [k for k, v in built.state_dict().items() if k not in state or state[k].shape != v.shape]
        if missing:
            raise UserError(f"teacher weights {weights} do not fit --t_cfg {cfg} "
                               f"({len(missing)} tensors differ, e.g. {missing[0]})")
        built.load_state_dict(state)
        for attr in ("names", "stride"):
            if hasattr(model, attr):
                setattr(built, attr, getattr(model, attr))
        model = built
    teacher_nc = yb.num_classes(model)
    teacher_names = getattr(model, "names", None) or [str(i) for i in range(teacher_nc)]
    if class_map is None and student_names is not None:
        class_map = resolve_class_map(student_names, teacher_names, class_pairs, teacher=weights)
    elif class_map is not None:
        student_names = _check_resumed_map(class_map, weights, teacher_nc, student_names)
    if class_map is not None:
        LOGGER.info(class_map.describe(student_names, teacher_names))
    elif nc is not None and teacher_nc != nc:
        yb.LOGGER.warning(f"WARNING: teacher {weights} has nc={teacher_nc}, the dataset nc={nc}")
    return FrozenTeacher(model.to(device), half=half, class_map=class_map)


def _check_resumed_map(class_map: TeacherClassMap, weights: str, teacher_nc: int,
                       student_names: Optional[Names]) -> Names:
    """A resumed run's map must still fit its teacher and dataset; the student's names (its indices if none)."""
    if student_names is None:
        student_names = [str(j) for j in range(class_map.student_nc)]
    if (class_map.teacher_nc, class_map.student_nc) != (teacher_nc, len(student_names)):
        raise UserError(f"the run was started with its teacher's {class_map.teacher_nc} classes mapped to "
                        f"{class_map.student_nc} (its last.pt keeps the map); the teacher {weights} has "
                        f"{teacher_nc}, the dataset {len(student_names)}")
    return student_names

"""Student + frozen teacher + feature recorders + adapters -> named distillation loss terms.

The one-way flow of a step: student forward (student hooks record features) -> teacher forward
under no_grad (teacher hooks record detached features) -> adapters map student features to the
teacher's shapes -> pure-tensor losses -> a dict of weighted terms the trainer adds to the task loss.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn as nn

from . import yolo_backend as yb
from .config import DistillConfig, LayerPair
from .errors import UserError
from .hooks import FeatureRecorder, StudentWithAdapters, adapter_key, build_adapters, probe_feature_shapes
from .losses import build_feature_loss, output_distillation_loss
from .teacher import FrozenTeacher

# Loss names are declared here once; the progress bar, results.csv, TensorBoard and results.png
# all take their columns from `loss_names()`.
TASK_TERMS = ("box_loss", "obj_loss", "cls_loss")
DISTILL_OUTPUT = "distill/output"
DISTILL_FEATURE = "distill/feature"


def loss_names(config: DistillConfig) -> tuple[str, ...]:
    """Every loss term logged for a run with this config, in display order."""
    return TASK_TERMS + ((DISTILL_OUTPUT,) if config.output else ()) + ((DISTILL_FEATURE,) if config.feature else ())


def default_layer_pairs(student: nn.Module, teacher: nn.Module) -> tuple[LayerPair, ...]:
    """Pair the layers that feed Detect, level by level (P3-P3, P4-P4, P5-P5)."""
    s_layers, t_layers = yb.detect_input_layers(student), yb.detect_input_layers(teacher)
    if len(s_layers) != len(t_layers):
        raise UserError(f"student has {len(s_layers)} detection levels, teacher {len(t_layers)}: "
                        f"pass --d_layers explicitly")
    return tuple(LayerPair(s, t) for s, t in zip(s_layers, t_layers))


def check_output_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Output distillation compares heads cell by cell: nc, levels, anchors and strides must match."""
    s, t = yb.head_layout(student), yb.head_layout(teacher)
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


class Distiller:
    """Computes the distillation terms of one batch; owns the hooks and the adapters."""

    def __init__(self, student: nn.Module, teacher: FrozenTeacher, config: DistillConfig, *, gains: dict,
                 imgsz: int, device: torch.device):
        self.student, self.teacher, self.config = student, teacher, config
        self.gains = {k: float(gains[k]) for k in ("box", "obj", "cls")}
        self.nc = yb.num_classes(student)
        self.pairs: tuple[LayerPair, ...] = ()
        self.adapters = nn.ModuleDict()
        self.feature_loss: nn.Module | None = None
        self._student_rec = self._teacher_rec = None
        if config.output:
            check_output_compatible(student, teacher.model)
        if config.feature:
            self.pairs = config.layers or default_layer_pairs(student, teacher.model)
            s_names = [p.student for p in self.pairs]
            t_names = [p.teacher for p in self.pairs]
            # Recorders validate the names before the probe runs any forward pass.
            self._student_rec = FeatureRecorder(student, s_names)
            self._teacher_rec = FeatureRecorder(teacher.model, t_names, detach=True)
            s_shapes = probe_feature_shapes(student, s_names, imgsz, device)
            t_shapes = probe_feature_shapes(teacher.model, t_names, imgsz, device)
            self.adapters = build_adapters(s_shapes, t_shapes, [(p.student, p.teacher) for p in self.pairs])
            self.adapters.to(device)
            self.feature_loss = build_feature_loss(config.feature_loss, **config.feature_loss_kwargs)
        self.module = StudentWithAdapters(student, self.adapters, [(p.student, p.teacher) for p in self.pairs],
                                          self._student_rec)
        self.forward_module: nn.Module = self.module  # the DistributedDataParallel wrapper under torchrun
        self._step = None  # (imgs, teacher raw, teacher features, adapted student features) of the last batch

    # ------------------------------------------------------------------ hooks
    def attach(self) -> "Distiller":
        """Register the forward hooks (after ModelEMA's deep copy, so the EMA never carries them)."""
        for rec in (self._student_rec, self._teacher_rec):
            if rec is not None:
                rec.attach()
        return self

    def remove(self) -> None:
        """Remove every hook this distiller registered."""
        for rec in (self._student_rec, self._teacher_rec):
            if rec is not None:
                rec.remove()

    def student_detached(self):
        """Context in which the student has no hooks: deep copies and checkpoints stay plain YOLOv5."""
        return nullcontext() if self._student_rec is None else self._student_rec.detached()

    def trainable(self) -> nn.Module:
        """Student and adapters as one module, for the optimizer (both learn), gradient clipping and DDP."""
        return self.module

    # ------------------------------------------------------------------ losses
    def forward_student(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """Student raw head outputs (B, A, H, W, 5 + nc), recording its features; the teacher runs first.

        The teacher goes before the student so that its forward pass is not competing with the
        student's live autograd graph for memory: measured on CPU, 73 ms first against 102 ms
        after (benchmarks/step_profile.py). `terms()` then reuses its outputs for the same batch.
        """
        teacher_raw = self.teacher(imgs) if self.config.enabled else None
        t_feats = self._teacher_rec.pop() if self._teacher_rec is not None else {}
        raw, adapted = self.forward_module(imgs, {k: tuple(v.shape[-2:]) for k, v in t_feats.items()})
        self._step = (imgs, teacher_raw, t_feats, adapted)
        return raw

    def _batch(self, imgs: torch.Tensor):
        """Teacher outputs, teacher features and adapted student features of `imgs`: those forward_student
        saved, or (a student run some other way) computed now from the student's recorded features."""
        step, self._step = self._step, None
        if step is not None and step[0] is imgs:
            return step[1:]
        teacher_raw = self.teacher(imgs) if self.config.enabled else None
        if not self.config.feature:
            return teacher_raw, {}, {}
        t_feats = self._teacher_rec.pop()
        if step is not None:  # forward_student already took (and adapted) the student's features
            return teacher_raw, t_feats, step[3]
        s_feats = self._student_rec.pop()
        adapted = {adapter_key(p.student, p.teacher): self.adapters[adapter_key(p.student, p.teacher)](
            s_feats[p.student], size=t_feats[p.teacher].shape[-2:]) for p in self.pairs}
        return teacher_raw, t_feats, adapted

    def terms(self, imgs: torch.Tensor, student_raw: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted distillation terms for the batch `imgs` (per-image scale, like yolov5's loss items)."""
        teacher_raw, t_feats, adapted = self._batch(imgs)
        out: dict[str, torch.Tensor] = {}
        if self.config.output:
            lbox, lobj, lcls = output_distillation_loss(student_raw, teacher_raw, self.nc,
                                                        self.gains["box"], self.gains["obj"], self.gains["cls"])
            out[DISTILL_OUTPUT] = self.config.output_weight * (lbox + lobj + lcls)
        if self.config.feature:
            losses = [self.feature_loss(adapted[adapter_key(p.student, p.teacher)].float(), t_feats[p.teacher].float())
                      for p in self.pairs]
            out[DISTILL_FEATURE] = self.config.feature_weight * torch.stack(losses).mean()
        return out

    def describe(self) -> str:
        """The total loss as a formula, for the log."""
        parts = ["(box + obj + cls)"]
        if self.config.output:
            parts.append(f"{self.config.output_weight:g}*output_mse")
        if self.config.feature:
            layers = ", ".join(map(str, self.pairs))
            parts.append(f"{self.config.feature_weight:g}*{self.config.feature_loss}[{layers}]")
        return "loss = (" + " + ".join(parts) + ") * batch_size"

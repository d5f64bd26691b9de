"""Student + frozen teacher + adapters as one module, for both tasks: forward(x) -> (student output, terms).

The one-way flow of a step: teacher forward under no_grad (its hooks record detached features) -> student
forward (its hooks record features) -> adapters map student features to the teacher's shapes -> pure-tensor
losses -> a dict of named, weighted terms the trainer adds to its task loss. The teacher runs first so that
its forward pass does not compete with the student's live autograd graph for memory (measured on CPU: 73 ms
first against 102 ms after, benchmarks/step_profile.py).

What is distilled is named terms side by side: an output term (detection's objectness-weighted MSE of the
heads, classification's Hinton KD) and the feature term (any registered feature loss over layer pairs).
Nothing is kept between calls: each forward returns everything its batch needs. The module's parameters
are the student's and the adapters' (what the optimizer trains and DistributedDataParallel wraps); the
teacher is held outside the module tree, so neither sees it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from . import yolo_backend as yb
from .classification.losses import kd_kl_loss
from .config import DistillConfig, LayerPair
from .errors import UserError
from .hooks import FeatureRecorder, adapter_key, build_adapters, probe_feature_shapes
from .losses import build_feature_loss, output_distillation_loss
from .teacher import FrozenTeacher

# Loss names are declared here once; the progress bar, results.csv, TensorBoard and results_all.png
# all take their columns from them.
TASK_TERMS = ("box_loss", "obj_loss", "cls_loss")
DISTILL_OUTPUT = "distill/output"
DISTILL_FEATURE = "distill/feature"
DISTILL_KD = "distill/kd"


def loss_names(config: DistillConfig) -> tuple[str, ...]:
    """Every loss term logged for a detection run with this config, in display order."""
    return TASK_TERMS + ((DISTILL_OUTPUT,) if config.output else ()) + ((DISTILL_FEATURE,) if config.feature else ())


# ---- output terms: (student output, teacher output) -> one weighted term ----------------------------------
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


class HintonTerm:
    """Classification: alpha * T^2 * KL(teacher probabilities at T || student at T) (Hinton et al. 2015);
    the teacher output is its (ensemble's) softened probabilities. The (1 - alpha) * CE part is the task's."""

    name = DISTILL_KD

    def __init__(self, temperature: float, alpha: float):
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        return self.alpha * kd_kl_loss(student_logits, teacher_probs, self.temperature)

    def describe(self) -> str:
        return f"{self.alpha:g}*T^2*KL(T={self.temperature:g})"


class DistillationModel(nn.Module):
    """The student, its adapters and (outside the module tree) the frozen teacher.

    forward(x, teacher_output=None) -> (student output, {term name: weighted term}). `teacher_output`
    replaces the teacher's forward when the caller has it already (classification's cached logits store).
    Feature distillation records `pairs` of layers with forward hooks: on `student` and on `feature_teacher`
    (the teacher's module that holds the named layers; the teacher itself by default).
    """

    def __init__(self, student: nn.Module, teacher: Optional[Callable[[torch.Tensor], Any]], *,
                 output_term: Optional[Callable] = None, pairs: Sequence[LayerPair] = (),
                 feature_teacher: Optional[nn.Module] = None, feature_loss: str = "mse",
                 feature_loss_kwargs: Optional[dict] = None, feature_weight: float = 1.0,
                 imgsz: int = 640, teacher_imgsz: Optional[int] = None, device: Optional[torch.device] = None):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple: not a submodule, so not trained, wrapped or saved
        self.output_term = output_term
        self.pairs = tuple(pairs)
        self.feature_weight = feature_weight
        self.feature_loss_name = feature_loss
        self.adapters = nn.ModuleDict()
        self._student_rec = self._teacher_rec = None
        self.feature_loss: Optional[nn.Module] = None
        if self.pairs:
            feature_teacher = feature_teacher if feature_teacher is not None else teacher
            s_names, t_names = [p.student for p in self.pairs], [p.teacher for p in self.pairs]
            # Recorders validate the names before the probe runs any forward pass.
            self._student_rec = FeatureRecorder(student, s_names)
            self._teacher_rec = FeatureRecorder(feature_teacher, t_names, detach=True)
            s_shapes = probe_feature_shapes(student, s_names, imgsz, device)
            t_shapes = probe_feature_shapes(feature_teacher, t_names, teacher_imgsz or imgsz, device)
            self.adapters = build_adapters(s_shapes, t_shapes, [(p.student, p.teacher) for p in self.pairs])
            if device is not None:
                self.adapters.to(device)
            self.feature_loss = build_feature_loss(feature_loss, **(feature_loss_kwargs or {}))

    @property
    def teacher(self) -> Optional[Callable[[torch.Tensor], Any]]:
        return self._teacher[0]

    def term_names(self) -> tuple[str, ...]:
        return ((self.output_term.name,) if self.output_term else ()) + ((DISTILL_FEATURE,) if self.pairs else ())

    # ---- hooks ---------------------------------------------------------------------------------------
    def attach(self) -> "DistillationModel":
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

    @property
    def attached(self) -> bool:
        return any(rec is not None and rec.attached for rec in (self._student_rec, self._teacher_rec))

    @contextmanager
    def student_detached(self) -> Iterator[None]:
        """Inside the block the student has no hooks: deep copies and checkpoints stay plain."""
        if self._student_rec is None:
            yield
        else:
            with self._student_rec.detached():
                yield

    # ---- the step ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, teacher_output: Any = None) -> tuple[Any, dict[str, torch.Tensor]]:
        if teacher_output is None and self.teacher is not None:
            with torch.no_grad():
                teacher_output = self.teacher(x)
        t_feats = self._teacher_rec.pop() if self._teacher_rec is not None else {}
        out = self.student(x)
        terms: dict[str, torch.Tensor] = {}
        if self.output_term is not None:
            terms[self.output_term.name] = self.output_term(out, teacher_output)
        if self.pairs:
            s_feats = self._student_rec.pop()
            losses = []
            for p in self.pairs:
                adapted = self.adapters[adapter_key(p.student, p.teacher)](s_feats[p.student],
                                                                          size=t_feats[p.teacher].shape[-2:])
                losses.append(self.feature_loss(adapted.float(), t_feats[p.teacher].float()))
            terms[DISTILL_FEATURE] = self.feature_weight * torch.stack(losses).mean()
        return out, terms

    def describe(self) -> str:
        """The distillation terms as a formula, for the log."""
        parts = [self.output_term.describe()] if self.output_term is not None else []
        if self.pairs:
            parts.append(f"{self.feature_weight:g}*{self.feature_loss_name}[{', '.join(map(str, self.pairs))}]")
        return " + ".join(parts)


# ---- detection ---------------------------------------------------------------------------------------------
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


def detection_distiller(student: nn.Module, teacher: FrozenTeacher, config: DistillConfig, *, gains: dict,
                        imgsz: int, device: torch.device) -> DistillationModel:
    """The DistillationModel of a YOLOv5 student and teacher, as `config` asks (output, features or both)."""
    output_term = None
    if config.output:
        check_output_compatible(student, teacher.model)
        output_term = YoloOutputTerm(yb.num_classes(student), gains, config.output_weight, config.output_loss,
                                     anchors=yb.detect_head(student).anchors)
    pairs = (config.layers or default_layer_pairs(student, teacher.model)) if config.feature else ()
    return DistillationModel(student, teacher, output_term=output_term, pairs=pairs, feature_teacher=teacher.model,
                             feature_loss=config.feature_loss, feature_loss_kwargs=config.feature_loss_kwargs,
                             feature_weight=config.feature_weight, imgsz=imgsz, device=device)

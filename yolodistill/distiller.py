"""Student + frozen teacher + adapters as one module, for both tasks: forward(x) -> (student output, terms).

The one-way flow of a step: teacher forward under no_grad (its hooks record detached features) -> student
forward (its hooks record features) -> adapters map student features to the teacher's shapes -> pure-tensor
losses -> a dict of named, weighted terms the trainer adds to its task loss. The teacher runs first so that
its forward pass does not compete with the student's live autograd graph for memory (measured on CPU: 73 ms
first against 102 ms after, benchmarks/step_profile.py).

What is distilled is named terms side by side: an output term (the task's: detection.distillation's
YoloOutputTerm compares the heads, classification.distill's HintonTerm the softened logits) and the feature
term (any registered feature loss over layer pairs). An output term is any callable with a `name` and a
`describe()`: term(student output, teacher output) -> weighted scalar. Nothing is kept between calls: each
forward returns everything its batch needs. The module's parameters are the student's and the adapters'
(what the optimizer trains and DistributedDataParallel wraps); the teacher is held outside the module tree,
so neither sees it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .config import LayerPair
from .hooks import FeatureRecorder, adapter_key, build_adapters, probe_feature_shapes
from .losses import build_feature_loss

# The feature term's name, the same in both tasks; the progress bar, results.csv, TensorBoard and the curve
# grids take their columns from the terms' names.
DISTILL_FEATURE = "distill/feature"


@dataclass
class DistillerConfig:
    """What a DistillationModel distils: the task's output term (None: none), the feature term over `pairs` of
    layers (none when empty) with a registered loss, its keyword arguments and its weight, and the input sizes that
    probe the layers' shapes (the student's; the teacher's when it takes another)."""

    output_term: Optional[Callable] = None
    pairs: Sequence[LayerPair] = ()
    feature_loss: str = "mse"
    feature_loss_kwargs: dict = field(default_factory=dict)
    feature_weight: float = 1.0
    imgsz: int = 640
    teacher_imgsz: Optional[int] = None


class DistillationModel(nn.Module):
    """The student, its adapters and (outside the module tree) the frozen teacher.

    forward(x, teacher_output=None) -> (student output, {term name: weighted term}). `teacher_output`
    replaces the teacher's forward when the caller has it already (classification's cached logits store).
    Feature distillation records `config.pairs` of layers with forward hooks: on `student` and on
    `feature_teacher` (the teacher's module that holds the named layers; the teacher itself by default).
    """

    def __init__(self, student: nn.Module, teacher: Optional[Callable[[torch.Tensor], Any]],
                 config: Optional[DistillerConfig] = None, *, feature_teacher: Optional[nn.Module] = None,
                 device: Optional[torch.device] = None):
        super().__init__()
        config = config if config is not None else DistillerConfig()
        self.student = student
        self._teacher = (teacher,)  # a tuple: not a submodule, so not trained, wrapped or saved
        self.output_term = config.output_term
        self.pairs = tuple(config.pairs)
        self.feature_weight = config.feature_weight
        self.feature_loss_name = config.feature_loss
        self.adapters = nn.ModuleDict()
        self._student_rec = self._teacher_rec = None
        self.feature_loss: Optional[nn.Module] = None
        if self.pairs:
            feature_teacher = feature_teacher if feature_teacher is not None else teacher
            s_names, t_names = [p.student for p in self.pairs], [p.teacher for p in self.pairs]
            # Recorders validate the names before the probe runs any forward pass.
            self._student_rec = FeatureRecorder(student, s_names)
            self._teacher_rec = FeatureRecorder(feature_teacher, t_names, detach=True)
            s_shapes = probe_feature_shapes(student, s_names, config.imgsz, device)
            t_shapes = probe_feature_shapes(feature_teacher, t_names, config.teacher_imgsz or config.imgsz, device)
            self.adapters = build_adapters(s_shapes, t_shapes, [(p.student, p.teacher) for p in self.pairs])
            if device is not None:
                self.adapters.to(device)
            self.feature_loss = build_feature_loss(config.feature_loss, **config.feature_loss_kwargs)

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

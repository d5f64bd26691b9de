"""A teacher that knows more classes than the student (a COCO yolov5x for a person/car student): which teacher
class each student class is, matched by name or given by --t_classes, and the pure-tensor transform that makes
the teacher's raw head outputs speak in the student's classes.

Why the objectness becomes p' = sigmoid(obj) * max_{j mapped} sigmoid(cls_j):
yolov5 trains objectness without regard to class (its target is the IoU of the cell's box with whatever labelled
object is there) and each class by its own sigmoid (binary cross-entropy against one-hot targets on the cells
that hold an object). So sigmoid(obj) says "an object of any of the teacher's classes is here" and sigmoid(cls_j)
"it is of class j". The student's objectness is trained the same way on its own labels, where only objects of its
classes are objects: a dog in a person/car image is background. What it should learn from the teacher is
therefore P(an object of a mapped class is here) = P(object) * P(its class is mapped | object). With independent
class sigmoids that second factor lies between max_j c_j and min(1, sum_j c_j) over the mapped classes j; on
the objects a trained teacher knows its class scores are close to one-hot and the bounds meet. The max is what
yolov5's own NMS uses (detect scores a box obj * sigmoid(cls_j) of its best class), so p' is the confidence of the
best mapped-class box the teacher would report at that cell: a cell sure of a dog gets p' near 0, a cell sure of
a person keeps about its objectness. The loss weights box and class errors by the teacher's objectness, so with
p' a dog's box teaches the student nothing either.

Its limits: a teacher torn between two mapped classes (person 0.5, car 0.5) gives obj * 0.5 where the object is
surely one of the two (the max undercounts; the sum would overcount a teacher that calls it both); a teacher's
class calibration carries over into the student's objectness; and when every teacher class is mapped (the same
classes, renamed or reordered) no cell can hold an unmapped object, so objectness is left as it is and only the
class logits are reordered.

Pseudo-labels are not transformed: they are the teacher's own boxes after NMS restricted to the mapped classes,
as yolov5's `detect --classes` keeps them (its best class over all of its classes, kept only when that class is
mapped), renumbered to the student's classes.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

LOGGER = logging.getLogger("yolodistill")
MAX_LOGIT = 50.0  # the transformed objectness logit is clamped to +-this: sigmoid(50) is 1 in float32 and
#   sigmoid(-50) is 2e-22, so no probability a loss weights changes, and the logit stays finite in FP16 (65504)
#   where log-space sums of extreme logits would not (a logsigmoid above a logit of ~104 is exactly 0 in float32,
#   and the logit of p' = 1 is infinite).
Names = Union[Sequence[str], Mapping[int, str]]


class TeacherClassMap:
    """Student class j is teacher class `teacher_classes[j]` (distinct); the teacher's other classes are ignored.
    Applied to the teacher's raw per-level head outputs (B, A, H, W, 5 + nc_T) -> (B, A, H, W, 5 + nc_S)."""

    def __init__(self, teacher_classes: Sequence[int], teacher_nc: int):
        self.teacher_classes = tuple(int(i) for i in teacher_classes)
        self.teacher_nc = int(teacher_nc)
        if not self.teacher_classes or any(not 0 <= i < self.teacher_nc for i in self.teacher_classes):
            raise ValueError(f"teacher classes {list(self.teacher_classes)} are not classes of a teacher of "
                             f"{self.teacher_nc}")
        if len(set(self.teacher_classes)) != len(self.teacher_classes):
            raise ValueError(f"teacher classes {list(self.teacher_classes)} repeat a class")
        # an unmapped teacher class exists: objectness must count only the mapped ones (why: module docstring)
        self.restricts = len(self.teacher_classes) < self.teacher_nc
        self._index: dict[torch.device, Tensor] = {}

    @property
    def student_nc(self) -> int:
        return len(self.teacher_classes)

    def __call__(self, teacher_raw: Sequence[Tensor]) -> list[Tensor]:
        """Every level mapped: box logits as they are, class logits in the student's order, objectness p'."""
        return [self.map_level(raw) for raw in teacher_raw]

    def map_level(self, raw: Tensor) -> Tensor:
        """(..., 5 + nc_T) raw logits -> (..., 5 + nc_S), in the dtype given."""
        if raw.shape[-1] != 5 + self.teacher_nc:
            raise ValueError(f"teacher output's last dim {raw.shape[-1]} is not 5 + {self.teacher_nc} classes")
        classes = raw.index_select(-1, self._indices(raw.device) + 5)
        obj = raw[..., 4:5]
        if self.restricts:
            obj = mapped_objectness(raw[..., 4], classes.amax(-1))[..., None]
        return torch.cat((raw[..., :4], obj, classes), -1)

    def student_classes(self, teacher_classes: Tensor) -> Tensor:
        """Teacher class indices (any shape, any dtype) as the student's; an unmapped class becomes -1."""
        lookup = torch.full((self.teacher_nc,), -1, dtype=torch.long, device=teacher_classes.device)
        lookup[self._indices(teacher_classes.device)] = torch.arange(self.student_nc, device=teacher_classes.device)
        return lookup[teacher_classes.long()].to(teacher_classes.dtype)

    def _indices(self, device: torch.device) -> Tensor:
        if device not in self._index:  # once per device, not a copy every step
            self._index[device] = torch.tensor(self.teacher_classes, dtype=torch.long, device=device)
        return self._index[device]

    def state_dict(self) -> dict:
        """Plain data, for last.pt (--resume goes on with the same map)."""
        return {"teacher_classes": list(self.teacher_classes), "teacher_nc": self.teacher_nc}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TeacherClassMap":
        return cls(state["teacher_classes"], state["teacher_nc"])

    def describe(self, student_names: Names, teacher_names: Names) -> str:
        """`person<-person(0), car<-automobile(2)`, and what is done about the rest."""
        student, teacher = class_names(student_names), class_names(teacher_names)
        pairs = ", ".join(f"{student[j]}<-{teacher[i]}({i})" for j, i in enumerate(self.teacher_classes))
        rest = (f"; objectness counts only these, the teacher's {self.teacher_nc - self.student_nc} other classes "
                f"are ignored" if self.restricts else "")
        return f"teacher classes as the student's: {pairs}{rest}"


def mapped_objectness(obj: Tensor, best_class: Tensor) -> Tensor:
    """The logit of p' = sigmoid(obj) * sigmoid(best_class), elementwise, in the dtype of `obj`: computed in
    float32 log space (log p' as a sum of logsigmoids, log(1 - p') as log(-expm1(log p')), exact where p' is
    near 1 and 1 - p' would round to 0), clamped to +-MAX_LOGIT."""
    log_p = F.logsigmoid(obj.float()) + F.logsigmoid(best_class.float())
    logit = log_p - torch.log(-torch.expm1(log_p))
    return logit.clamp(-MAX_LOGIT, MAX_LOGIT).to(obj.dtype)


def class_names(names: Names) -> list[str]:
    """Class names in index order, from yolov5's list or {index: name} dict."""
    if isinstance(names, Mapping):
        return [str(names[i]) for i in sorted(names)]
    return [str(n) for n in names]


def _key(name: str) -> str:
    return str(name).strip().lower()


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} classes: {shown}" + (", ..." if len(names) > limit else "")


def _by_name(name: str, names: Sequence[str]) -> list[int]:
    return [i for i, n in enumerate(names) if _key(n) == _key(name)]


def _find(token: str, names: Sequence[str], whose: str, spec: str) -> int:
    """A class of `names` by index (digits) or by name, for the --t_classes entry `spec`."""
    token = token.strip()
    if token.isdigit():
        if int(token) >= len(names):
            raise UserError(f"--t_classes {spec}: {whose} has no class {token} ({_listed(names)})")
        return int(token)
    hits = _by_name(token, names)
    if not hits:
        raise UserError(f"--t_classes {spec}: {whose} has no class named {token!r} ({_listed(names)})")
    if len(hits) > 1:
        raise UserError(f"--t_classes {spec}: {whose} names classes {hits[0]} and {hits[1]} {token!r}: give the index")
    return hits[0]


def resolve_class_map(student_names: Names, teacher_names: Names, pairs: Sequence[str] = (), *,
                      teacher: str = "") -> Optional[TeacherClassMap]:
    """Each student class's teacher class: the `pairs` given (--t_classes `student=teacher`, a name or an index on
    each side), the rest by name (case and surrounding spaces ignored). None when that is every teacher class in
    its own place, or when no pair is given, the counts are equal and the names say nothing against matching by
    index (yolov5's default names '0', '1', ... of a model built from a yaml). A student class the teacher lacks
    is a UserError that names it."""
    student, teachers = class_names(student_names), class_names(teacher_names)
    teacher = f"the teacher {teacher}".strip()  # `teacher`: its file, for the messages
    chosen: dict[int, int] = {}
    for spec in pairs:
        s, sep, t = str(spec).partition("=")
        if not sep or not s.strip() or not t.strip():
            raise UserError(f"--t_classes entry {spec!r} needs student=teacher (a class name or index on each side)")
        j = _find(s, student, "the dataset", spec)
        if j in chosen:
            raise UserError(f"--t_classes gives student class {student[j]!r} twice")
        chosen[j] = _find(t, teachers, teacher, spec)
    missing = []
    for j, name in enumerate(student):
        if j not in chosen:
            hits = _by_name(name, teachers)
            if len(hits) > 1:
                raise UserError(f"{teacher} names classes {hits[0]} and {hits[1]} {name!r}: give the "
                                f"one for the student's with --t_classes {name}=INDEX")
            if hits:
                chosen[j] = hits[0]
            else:
                missing.append(name)
    if missing and not pairs and len(student) == len(teachers) and all(i == j for j, i in chosen.items()):
        LOGGER.warning(f"WARNING: {teacher} names its classes {', '.join(teachers)}, the dataset "
                       f"{', '.join(student)}: matched by index; --t_classes matches them by name")
        return None
    if missing:
        raise UserError(f"{teacher} has no class named {', '.join(repr(n) for n in missing)} "
                        f"({_listed(teachers)}): give its class for each with --t_classes STUDENT=TEACHER "
                        f"(a name or an index)")
    indices = [chosen[j] for j in range(len(student))]
    for j, i in enumerate(indices):
        if indices.index(i) != j:
            raise UserError(f"student classes {student[indices.index(i)]!r} and {student[j]!r} are both the "
                            f"teacher's class {teachers[i]!r}: each needs its own (--t_classes)")
    if indices == list(range(len(teachers))):
        return None
    return TeacherClassMap(indices, len(teachers))

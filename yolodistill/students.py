"""What a student (or teacher) checkpoint holds, whichever task wrote it: the one place that tells the formats
apart. A detection checkpoint is yolov5's (a pickled DetectionModel, loaded weights-only with yolov5's layer
classes allowed); a classifier checkpoint is yolodistill's plain format (tensors and values, `format` says so).
Each task writes its own (trainer.py, classification/models.py); everything that reads a finished student --
val, detect, export, benchmark -- reads it through load_student().
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from torch import nn

from . import yolo_backend as yb
from .errors import UserError

DETECT, CLASSIFY = "detect", "classify"


@dataclass
class Student:
    task: str  # DETECT or CLASSIFY
    model: nn.Module  # FP32, eval mode, with its INT8 fake quantizers back on after --qat
    meta: dict  # detect: names, stride, imgsz (trained at; None if unknown); classify: classes, imgsz, mean, std, arch
    checkpoint: dict  # the file's dict as loaded (export fuses the model before it puts the quantizers back)
    path: Path

    @property
    def quant(self) -> Optional[dict]:
        """The INT8 ranges of a --qat student, else None."""
        return self.checkpoint.get("quant") or None

    @property
    def sparsity(self) -> Optional[str]:
        return self.checkpoint.get("sparsity")


def load_student(path: Union[str, Path], *, trust: bool = False, task: Optional[str] = None) -> Student:
    """The checkpoint at `path` as a Student; `task`: refuse the other task's checkpoint with one line."""
    from .classification.models import CHECKPOINT_FORMAT

    path = Path(path)
    ckpt = yb.load_yolov5_checkpoint(path, trust=trust)  # weights-only; a classifier checkpoint is plain data
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        found = CLASSIFY
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("ema") or ckpt.get("model"), yb.DetectionModel):
        found = DETECT
    else:
        raise UserError(f"{path} is neither a YOLOv5 detection checkpoint nor a yolodistill classifier checkpoint")
    if task == DETECT and found != DETECT:
        raise UserError(f"{path} is not a YOLOv5 detection checkpoint (a yolodistill classifier's)")
    if task == CLASSIFY and found != CLASSIFY:
        raise UserError(f"{path} is not a yolodistill classifier checkpoint (a YOLOv5 detector's)")
    return _classifier(path, ckpt) if found == CLASSIFY else _detector(path, ckpt)


def _detector(path: Path, ckpt: dict) -> Student:
    model = yb.checkpoint_model(ckpt)
    if ckpt.get("quant"):
        from .compress.quant import attach_quantizers

        # on a copy: the checkpoint's own model stays plain for export, which fuses before quantizing
        model = attach_quantizers(deepcopy(model), ckpt["quant"])
    opt = ckpt.get("opt") if isinstance(ckpt.get("opt"), dict) else {}
    meta = {**yb.export_metadata(model), "imgsz": opt.get("imgsz")}
    return Student(DETECT, model, meta, ckpt, path)


def _classifier(path: Path, ckpt: dict) -> Student:
    from .classification.models import classifier_from_checkpoint

    meta = {k: ckpt[k] for k in ("arch", "classes", "imgsz", "mean", "std")}
    meta["head"] = ckpt.get("head")
    return Student(CLASSIFY, classifier_from_checkpoint(ckpt), meta, ckpt, path)

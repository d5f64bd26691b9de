"""load_student: the one reader of finished checkpoints tells the two tasks' formats apart."""

from __future__ import annotations

import pytest
import torch

from yolodistill.errors import UserError
from yolodistill.students import CLASSIFY, DETECT, load_student

from .conftest import SHAPES


def test_each_task_is_recognised_and_the_other_refused(teacher_weights, shape_teachers, tmp_path):
    det = load_student(teacher_weights)
    assert det.task == DETECT and det.meta["stride"] == 32 and len(det.meta["names"]) == 2
    assert not det.model.training and det.quant is None
    cls = load_student(shape_teachers[0])
    assert cls.task == CLASSIFY and cls.meta["classes"] == list(SHAPES) and cls.meta["arch"] == "cnn"
    with pytest.raises(UserError, match="not a YOLOv5 detection checkpoint"):
        load_student(shape_teachers[0], task=DETECT)
    with pytest.raises(UserError, match="not a yolodistill classifier checkpoint"):
        load_student(teacher_weights, task=CLASSIFY)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(UserError, match="neither a YOLOv5 detection checkpoint nor a yolodistill classifier"):
        load_student(junk)

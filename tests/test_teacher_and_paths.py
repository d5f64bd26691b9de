"""Teacher loading with --t_cfg, and packaged YAML found through the installed package."""

from __future__ import annotations

import pytest
import torch

from yolodistill import yolo_backend as yb
from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.errors import UserError
from yolodistill.paths import cfg_path, load_cfg
from yolodistill.detection.teacher import FrozenTeacher, load_teacher


def _teacher_file(tmp_path, cfg="yolov5s.yaml", nc=2):
    model = yb.build_model(cfg, nc)
    path = tmp_path / "teacher.pt"
    save_checkpoint_atomic({"model": model.half(), "ema": None, "epoch": -1, "optimizer": None}, path)
    return path, model


def test_load_teacher_with_and_without_t_cfg(tmp_path):
    path, model = _teacher_file(tmp_path)
    plain = load_teacher(str(path), nc=2, device=torch.device("cpu"))
    rebuilt = load_teacher(str(path), cfg="yolov5s.yaml", nc=2, device=torch.device("cpu"))
    assert isinstance(plain, FrozenTeacher) and not plain.training
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, rebuilt.model.state_dict()[k])
    assert not any(p.requires_grad for p in rebuilt.parameters())
    with pytest.raises(UserError, match="do not fit --t_cfg"):
        load_teacher(str(path), cfg="yolov5m.yaml", nc=2, device=torch.device("cpu"))


def test_teacher_outputs_raw_levels(tmp_path):
    path, _ = _teacher_file(tmp_path)
    teacher = load_teacher(str(path), nc=2, device=torch.device("cpu"))
    raw = teacher(torch.rand(2, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 8, 7), (2, 3, 4, 4, 7), (2, 3, 2, 2, 7)]
    assert all(not r.requires_grad for r in raw)


def test_packaged_cfg_is_found():
    assert cfg_path("quickstart.yaml").is_file()
    assert {"default", "fast"} <= set(load_cfg("quickstart.yaml"))
    with pytest.raises(UserError, match="nope.yaml"):
        cfg_path("nope.yaml")


def test_teacher_raw_outputs_equal_eval_mode_raw(tmp_path):
    """Skipping the box decode returns exactly the raw tensors eval mode returns, BN still in eval."""
    path, _ = _teacher_file(tmp_path)
    teacher = load_teacher(str(path), nc=2, device=torch.device("cpu"))
    imgs = torch.rand(2, 3, 64, 64)
    fast = teacher(imgs)
    with torch.no_grad():
        reference = yb.raw_head_outputs(teacher.model(imgs))
    assert all(torch.equal(a, b) for a, b in zip(fast, reference))
    assert not any(m.training for m in teacher.modules())

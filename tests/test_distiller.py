"""The distiller on randomly initialised YOLOv5 models: gradients, frozen teacher, hooks, unlabeled batches."""

from __future__ import annotations

import pytest
import torch

from yolodistill import yolo_backend as yb
from yolodistill.config import DistillConfig, LayerPair
from yolodistill.detection.distillation import DISTILL_OUTPUT, detection_distiller, loss_names
from yolodistill.detection.teacher import FrozenTeacher
from yolodistill.distiller import DISTILL_FEATURE, DistillationModel
from yolodistill.errors import UserError

IMGSZ = 64
GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}


def _models(nc: int = 2, teacher_cfg: str = "yolov5s.yaml"):
    torch.manual_seed(0)
    student = yb.build_model("yolov5n.yaml", nc)
    teacher_model = yb.build_model(teacher_cfg, nc)
    yb.copy_anchors(teacher_model, student)
    return student, FrozenTeacher(teacher_model)


def _distiller(student, teacher, **cfg) -> DistillationModel:
    config = DistillConfig(**{"output": True, "feature": True, **cfg})
    return detection_distiller(student, teacher, config, gains=GAINS, imgsz=IMGSZ,
                               device=torch.device("cpu")).attach()


def test_gradients_reach_student_and_adapters_never_teacher():
    student, teacher = _models()
    d = _distiller(student, teacher)
    student.train()
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    _, terms = d(imgs)
    assert set(terms) == {DISTILL_OUTPUT, DISTILL_FEATURE}
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    adapter_params = list(d.adapters.parameters())
    assert adapter_params and all(p.grad is not None for p in adapter_params)
    d.remove()


def test_teacher_stays_frozen_in_eval_mode_with_unchanged_bn():
    student, teacher = _models()
    d = _distiller(student, teacher)
    buffers = {k: v.clone() for k, v in teacher.model.state_dict().items() if "running" in k}
    container = torch.nn.ModuleDict({"student": student, "teacher": teacher})
    container.train()  # a parent's train() must not reach the teacher
    assert not teacher.training and not teacher.model.training
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    # the teacher is outside the module tree: neither the optimizer nor DDP nor a state_dict sees it
    assert not any(k.startswith("teacher") for k in d.state_dict())
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    sum(d(imgs)[1].values()).backward()
    opt.step()
    for k, v in teacher.model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), k
    d.remove()


def test_hooks_removed_and_student_deepcopy_is_plain():
    from copy import deepcopy

    student, teacher = _models()
    d = _distiller(student, teacher)
    assert any(len(m._forward_hooks) for m in student.modules())
    with d.student_detached():
        clone = deepcopy(student)
    assert all(len(m._forward_hooks) == 0 for m in clone.modules())
    assert any(len(m._forward_hooks) for m in student.modules())  # re-attached after the copy
    d.remove()
    assert all(len(m._forward_hooks) == 0 for m in student.modules())
    assert all(len(m._forward_hooks) == 0 for m in teacher.modules())


def test_zero_distillation_when_student_is_teacher():
    """Same architecture and weights: every distillation term is exactly zero."""
    torch.manual_seed(0)
    model = yb.build_model("yolov5n.yaml", 2)
    twin = yb.build_model("yolov5n.yaml", 2)
    twin.load_state_dict(model.state_dict())
    model.eval()  # both in eval so BN uses the same (running) statistics
    d = _distiller(model, FrozenTeacher(twin))
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    _, terms = d(imgs)
    assert set(terms) == {DISTILL_OUTPUT, DISTILL_FEATURE} and all(float(v) == 0.0 for v in terms.values())
    d.remove()


def test_default_layers_are_detect_inputs_and_names_declared_once():
    student, teacher = _models()
    d = _distiller(student, teacher)
    assert d.pairs == tuple(LayerPair(f"model.{i}", f"model.{i}") for i in (17, 20, 23))
    assert d.term_names() == (DISTILL_OUTPUT, DISTILL_FEATURE)
    assert loss_names(DistillConfig(output=True, feature=True)) == ("box_loss", "obj_loss", "cls_loss",
                                                                    DISTILL_OUTPUT, DISTILL_FEATURE)
    assert loss_names(DistillConfig(output=True)) == ("box_loss", "obj_loss", "cls_loss", DISTILL_OUTPUT)
    d.remove()


def test_mismatched_heads_are_refused_before_training():
    student, _ = _models()
    with pytest.raises(UserError, match="same nc"):
        detection_distiller(student, FrozenTeacher(yb.build_model("yolov5s.yaml", 3)), DistillConfig(output=True),
                            gains=GAINS, imgsz=IMGSZ, device=torch.device("cpu"))
    other = yb.build_model("yolov5s.yaml", 2)
    yb.detect_head(other).anchors.mul_(1.5)
    with pytest.raises(UserError, match="same anchors"):
        detection_distiller(student, FrozenTeacher(other), DistillConfig(output=True), gains=GAINS, imgsz=IMGSZ,
                            device=torch.device("cpu"))


def test_unknown_layer_is_a_user_error():
    student, teacher = _models()
    with pytest.raises(UserError, match="model.99"):
        _distiller(student, teacher, layers=(LayerPair("model.99", "model.17"),))


def test_unlabeled_batch_gets_only_distillation_terms(tiny_data, tmp_path):
    """trainer.total_loss with targets=None: task terms are zero, distillation terms drive the step."""
    from yolodistill.detection.trainer import DistillTrainer

    student, teacher = _models()
    trainer = DistillTrainer.__new__(DistillTrainer)  # only the loss plumbing, no data loading
    trainer.config = DistillConfig(output=True, feature=True)
    trainer.loss_names = loss_names(trainer.config)
    trainer.distiller = _distiller(student, teacher)
    trainer.compute_loss = None  # must not be called for an unlabeled batch
    student.train()
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    pred, terms = trainer.distiller(imgs)
    total, items = trainer.total_loss(imgs, pred, None, terms)
    assert items[:3].abs().sum() == 0 and (items[3:] > 0).all()
    assert torch.isclose(total, items.sum() * 2)
    total.backward()
    assert any(p.grad is not None for p in student.parameters())
    trainer.distiller.remove()


def test_teacher_runs_once_and_before_the_student():
    """Each call runs the teacher first (memory, see step_profile), once, and keeps nothing for the next call."""
    student, teacher = _models()
    d = _distiller(student, teacher)
    calls = []
    h1 = teacher.model.register_forward_pre_hook(lambda m, a: calls.append("teacher"))
    h2 = student.register_forward_pre_hook(lambda m, a: calls.append("student"))
    student.train()
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    d(imgs)
    assert calls == ["teacher", "student"]
    d(imgs.clone())
    assert calls[2:] == ["teacher", "student"]
    h1.remove(), h2.remove()
    d.remove()


def test_a_given_teacher_output_replaces_the_teacher():
    """teacher_output (e.g. cached logits) is used as is: the teacher does not run."""
    student, teacher = _models()
    d = detection_distiller(student, teacher, DistillConfig(output=True), gains=GAINS, imgsz=IMGSZ,
                            device=torch.device("cpu")).attach()
    calls = []
    h = teacher.model.register_forward_pre_hook(lambda m, a: calls.append("teacher"))
    student.train()
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    live = teacher(imgs)
    calls.clear()
    _, given = d(imgs, teacher_output=live)
    _, computed = d(imgs)
    assert calls == ["teacher"]  # only the second call ran it
    assert torch.equal(given[DISTILL_OUTPUT], computed[DISTILL_OUTPUT])
    h.remove()
    d.remove()


@pytest.mark.parametrize("kind", ["mse", "kl", "mse_ciou"])
def test_the_output_loss_chosen_is_the_one_computed(kind):
    from yolodistill.losses import output_distillation_loss

    student, teacher = _models()
    d = _distiller(student, teacher, feature=False, output_loss=kind, output_weight=2.0)
    assert d.describe().startswith(f"2*output_{kind}")
    student.train()
    imgs = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        teacher_raw = teacher(imgs)
        out, terms = d(imgs, teacher_output=teacher_raw)
        expected = sum(output_distillation_loss(yb.raw_head_outputs(out), teacher_raw, 2,
                                                GAINS["box"], GAINS["obj"], GAINS["cls"], kind=kind,
                                                anchors=yb.detect_head(student).anchors))
    # the same tensors through the same function: equal up to float32 summation order
    assert terms[DISTILL_OUTPUT].item() == pytest.approx(2.0 * expected.item(), rel=4 * torch.finfo().eps)
    d.remove()


def test_checkpoints_from_before_the_output_loss_choice_mean_mse():
    from yolodistill.detection.train_options import TrainOptions

    assert DistillConfig().output_loss == "mse_ciou"  # today's default (config.py says why)
    old = DistillConfig(output=True).to_dict()
    del old["output_loss"]
    assert DistillConfig.from_dict(old).output_loss == "mse"
    # --resume reads the options from the checkpoint: a run started before the choice goes on with mse
    opt = vars(TrainOptions(data="d.yaml", t_weights="t.pt", d_output=True)).copy()
    del opt["output_loss"]
    assert TrainOptions.from_dict(opt).output_loss == "mse"
    assert TrainOptions.from_dict({**opt, "output_loss": "kl"}).output_loss == "kl"
    with pytest.raises(UserError, match="--output-loss must be one of mse, kl"):
        DistillConfig(output=True, output_loss="l1")

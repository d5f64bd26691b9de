"""A teacher of more classes than the student (issue 30): its classes matched by name or --t_classes, its outputs
and pseudo-labels in the student's classes, objectness counting only the mapped classes, and --resume keeping
the map."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from yolodistill import yolo_backend as yb
from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.cli import main
from yolodistill.detection.class_map import MAX_LOGIT, TeacherClassMap, mapped_objectness, resolve_class_map
from yolodistill.detection.distillation import check_output_compatible
from yolodistill.detection.teacher import FrozenTeacher, load_teacher
from yolodistill.errors import UserError

from .conftest import IMGSZ, interrupt_at_epoch
from .test_bad_input import _fails, _train

COCO_FEW = {0: "person", 1: "bicycle", 2: "car", 3: "dog"}


def _teacher_file(path: Path, names: dict, seed: int = 0) -> Path:
    """A random-init yolov5n of len(names) classes, saved as a checkpoint that names them."""
    torch.manual_seed(seed)
    model = yb.build_model("yolov5n.yaml", len(names))
    model.names = dict(names)
    save_checkpoint_atomic({"model": model.half(), "ema": None, "epoch": -1, "optimizer": None}, path)
    return path


# ---- which teacher class each student class is -------------------------------------------------------------------
def test_classes_matched_by_name_case_and_spaces_ignored():
    class_map = resolve_class_map([" Person", "CAR "], COCO_FEW)
    assert class_map.teacher_classes == (0, 2) and class_map.student_nc == 2 and class_map.restricts


def test_explicit_pairs_by_name_and_by_index_the_rest_by_name():
    class_map = resolve_class_map(["person", "auto", "bike"], COCO_FEW, ["auto=car", "2=1"])
    assert class_map.teacher_classes == (0, 2, 1)
    assert resolve_class_map(["a", "b"], COCO_FEW, ["0=dog", "b=person"]).teacher_classes == (3, 0)


def test_the_same_names_are_no_map_and_a_renaming_only_reorders_classes():
    assert resolve_class_map(["rect", "circle"], {0: "rect", 1: "circle"}) is None
    # the same count, names that say nothing (a teacher built from a yaml): by index, as before
    assert resolve_class_map(["rect", "circle"], {0: "0", 1: "1"}) is None
    swapped = resolve_class_map(["rect", "circle"], {0: "circle", 1: "rect"})
    assert swapped.teacher_classes == (1, 0) and not swapped.restricts  # no unmapped class: objectness as it is
    raw = torch.randn(2, 3, 4, 4, 7)
    assert torch.equal(swapped.map_level(raw), raw[..., [0, 1, 2, 3, 4, 6, 5]])


@pytest.mark.parametrize("student, pairs, match", [
    (["person", "truck"], [], "has no class named 'truck'"),
    (["person", "car"], ["car=lorry"], "has no class named 'lorry'"),
    (["person", "car"], ["car=9"], "has no class 9"),
    (["person", "car"], ["van=car"], "the dataset has no class named 'van'"),
    (["person", "car"], ["car"], "needs student=teacher"),
    (["person", "car"], ["car=person"], "both the teacher's class 'person'"),
    (["rect", "circle"], [], "has no class named"),  # the same count, but 'circle' is not where 'rect' says
])
def test_a_class_the_teacher_lacks_is_refused(student, pairs, match):
    teacher = COCO_FEW if student[0] == "person" else {0: "circle", 1: "square"}
    with pytest.raises(UserError, match=match):
        resolve_class_map(student, teacher, pairs, teacher="coco.pt")


def test_a_missing_class_ends_the_run_in_one_line_naming_it(capsys, tiny_data, tmp_path):
    teacher = _teacher_file(tmp_path / "three.pt", {0: "cat", 1: "rect", 2: "dog"})
    last = _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                                 str(teacher), "--d_output"), "--t_classes")
    assert "'circle'" in last and "'rect'" not in last
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher), "--d_output", "--t_classes", "circle=cow"), "no class named 'cow'")
    _fails(capsys, _train(tmp_path, "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--t_weights",
                          str(teacher), "--d_output", "--t_classes", "circle=2", "--single-cls"), "--single-cls")


def test_load_teacher_matches_the_datasets_names_and_checks_a_resumed_map(tmp_path):
    cpu, names = torch.device("cpu"), {0: "rect", 1: "circle"}
    same = _teacher_file(tmp_path / "same.pt", names)
    assert load_teacher(str(same), device=cpu, student_names=names).class_map is None
    three = _teacher_file(tmp_path / "three.pt", {0: "circle", 1: "square", 2: "rect"})
    teacher = load_teacher(str(three), device=cpu, student_names=names)
    assert teacher.class_map.teacher_classes == (2, 0) and teacher.num_classes == 2
    resumed = load_teacher(str(three), device=cpu, student_names=names, class_map=TeacherClassMap([1, 2], 3))
    assert resumed.class_map.teacher_classes == (1, 2)  # as last.pt kept it, not matched again
    with pytest.raises(UserError, match="last.pt keeps the map"):
        load_teacher(str(three), device=cpu, student_names=names, class_map=TeacherClassMap([3, 0], 4))


# ---- the transform ------------------------------------------------------------------------------------------------
def test_identity_leaves_the_outputs_bit_identical():
    raw = [torch.randn(2, 3, 8, 8, 9), torch.randn(2, 3, 4, 4, 9).half()]
    for level, mapped in zip(raw, TeacherClassMap(range(4), 4)(raw)):
        assert torch.equal(mapped, level) and mapped.dtype == level.dtype


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.float_sensitive  # float32 log-space arithmetic against float64 by hand
def test_objectness_counts_only_the_mapped_classes_by_hand():
    # teacher classes person, bicycle, car, dog; the student's person and car
    class_map = resolve_class_map(["person", "car"], COCO_FEW)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    cells = [  # obj, person, bicycle, car, dog logits
        (3.0, -9.0, -9.0, -9.0, 9.0),  # sure of a dog: no object for the student
        (3.0, 9.0, -9.0, -9.0, -9.0),  # sure of a person: about the teacher's objectness
        (3.0, -9.0, -9.0, 1.0, -9.0),  # unsure it is a car
        (-6.0, 9.0, -9.0, -9.0, -9.0),  # background
    ]
    raw = torch.zeros(1, 1, 1, len(cells), 9)
    for k, (obj, *cls) in enumerate(cells):
        raw[0, 0, 0, k, 4], raw[0, 0, 0, k, 5:] = obj, torch.tensor(cls)
        raw[0, 0, 0, k, :4] = torch.tensor([0.1, -0.2, 0.3, -0.4]) * (k + 1)
    out = class_map.map_level(raw)[0, 0, 0]
    assert out.shape == (len(cells), 7)
    assert torch.equal(out[:, :4], raw[0, 0, 0, :, :4])  # boxes as they are
    assert torch.equal(out[:, 5:], raw[0, 0, 0, :, [5, 7]])  # person, car
    expected = [_logit(sig(obj) * max(sig(cls[0]), sig(cls[2]))) for obj, *cls in cells]
    # float32 log space: logsigmoid, a sum and log(-expm1) each round to ~1e-7 relative, so |logit| (0.8-9 here)
    # is off by a few 1e-7 at most on any kernel: 1e-5 relative leaves a tenfold margin
    assert out[:, 4].tolist() == pytest.approx(expected, rel=1e-5)
    p = out[:, 4].sigmoid().tolist()
    assert p[0] < 2e-4  # sure of a dog: objectness near 0
    # the next two differ from sig(obj) by the model, not by rounding: the mapped class's sig(9) = 1 - 1.2e-4
    assert p[1] == pytest.approx(sig(3.0), rel=2e-4)  # sure of a person: keeps the objectness
    assert p[2] == pytest.approx(sig(3.0) * sig(1.0), rel=1e-5)
    assert p[3] == pytest.approx(sig(-6.0), rel=2e-4)


@pytest.mark.float_sensitive  # extreme logits through log space
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_objectness_stays_finite_for_extreme_logits(dtype):
    big = torch.finfo(dtype).max
    values = torch.tensor([-big, -1e4, -110.0, -60.0, -20.0, 0.0, 20.0, 60.0, 110.0, 1e4, big, float("inf"),
                           float("-inf")]).to(dtype)
    obj, cls = torch.meshgrid(values, values, indexing="ij")
    logit = mapped_objectness(obj, cls)
    assert logit.dtype == dtype and torch.isfinite(logit).all()
    assert logit.abs().max() <= MAX_LOGIT
    # never more sure of an object than the teacher's objectness (up to the clamp)
    assert (logit.float() <= obj.float().clamp(-MAX_LOGIT, MAX_LOGIT) + 1e-3).all()
    # p' near 1 keeps its precision: obj = cls = 20 gives 1 - p' = 2 e^-20 (logit 20 - log 2)
    assert mapped_objectness(torch.tensor([20.0]), torch.tensor([20.0])).item() == pytest.approx(20 - math.log(2),
                                                                                                 abs=1e-4)


def test_outputs_are_compared_after_the_map():
    student, teacher = yb.build_model("yolov5n.yaml", 2), yb.build_model("yolov5n.yaml", 4)
    with pytest.raises(UserError, match="same nc"):
        check_output_compatible(student, teacher)
    check_output_compatible(student, teacher, resolve_class_map(["person", "car"], COCO_FEW))
    teacher.names = COCO_FEW
    frozen = FrozenTeacher(teacher, class_map=resolve_class_map(["person", "car"], COCO_FEW))
    raw = frozen(torch.rand(1, 3, IMGSZ, IMGSZ))
    assert [r.shape[-1] for r in raw] == [7, 7, 7] and frozen.num_classes == 2


# ---- pseudo-labels --------------------------------------------------------------------------------------------------
def test_pseudo_labels_carry_student_classes_and_drop_unmapped_ones():
    model = yb.build_model("yolov5n.yaml", 4).eval()
    model.names = COCO_FEW
    boxes = [  # x, y, w, h (pixels), objectness, person, bicycle, car, dog
        [10, 10, 8, 8, 0.9, 0.9, 0.05, 0.1, 0.1],  # a person
        [40, 10, 8, 8, 0.9, 0.3, 0.05, 0.1, 0.95],  # a dog (its person score 0.27 is above the threshold)
        [10, 40, 8, 8, 0.9, 0.1, 0.05, 0.8, 0.1],  # a car
        [40, 40, 8, 8, 0.9, 0.1, 0.9, 0.1, 0.1],  # a bicycle
    ]
    pred = torch.tensor(boxes)[None]
    model.forward = lambda imgs: (pred.to(imgs.dtype), [])
    teacher = FrozenTeacher(model, class_map=resolve_class_map(["person", "car"], COCO_FEW))
    labels = teacher.pseudo_labels(torch.zeros(1, 3, IMGSZ, IMGSZ), conf_thres=0.25, first_index=5)
    rows = sorted(labels.tolist(), key=lambda r: r[1])
    assert [(r[0], r[1]) for r in rows] == [(5.0, 0.0), (5.0, 1.0)]  # image 5: a person (0), a car (1)
    assert rows[0][2:] == pytest.approx([10 / IMGSZ, 10 / IMGSZ, 8 / IMGSZ, 8 / IMGSZ])
    assert rows[1][2:4] == pytest.approx([10 / IMGSZ, 40 / IMGSZ])
    unmapped = FrozenTeacher(model).pseudo_labels(torch.zeros(1, 3, IMGSZ, IMGSZ), conf_thres=0.25)
    assert sorted(unmapped[:, 1].tolist()) == [0.0, 1.0, 2.0, 3.0]  # without the map: all four, teacher classes


# ---- a run ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_three_class_teacher_distils_into_two_classes_and_resume_keeps_the_map(tiny_data, tmp_path, monkeypatch):
    from yolodistill.detection import trainer as trainer_mod

    teacher = _teacher_file(tmp_path / "teacher.pt", {0: "Circle", 1: "triangle", 2: "rect"})
    real_train_epoch = interrupt_at_epoch(monkeypatch, 1)
    argv = ["train", "--imgsz", str(IMGSZ), "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noplots",
            "--project", str(tmp_path), "--name", "cm", "--cfg", "yolov5n.yaml", "--data", str(tiny_data),
            "--epochs", "2", "--t_weights", str(teacher), "--d_output"]
    assert main(argv) == 130  # interrupted in the second epoch, after the first epoch's checkpoints
    weights = tmp_path / "cm" / "weights"
    assert (weights / "best.pt").exists()
    ckpt = yb.load_yolov5_checkpoint(weights / "last.pt")
    assert ckpt["epoch"] == 0
    assert ckpt["distill"]["teacher_classes"] == {"teacher_classes": [2, 0], "teacher_nc": 3}  # rect, circle
    monkeypatch.setattr(trainer_mod.DistillTrainer, "train_epoch", real_train_epoch)

    # The teacher's names change under the run: matched by name again, 'rect' would be missing. The resumed run
    # goes on with the map it was started with.
    _teacher_file(teacher, {0: "a", 1: "b", 2: "c"})
    seen = {}
    real_restore = trainer_mod.DistillTrainer._restore

    def spy_restore(self, ck):
        real_restore(self, ck)
        seen["map"] = self.teacher.class_map.teacher_classes

    monkeypatch.setattr(trainer_mod.DistillTrainer, "_restore", spy_restore)
    assert main(["train", "--resume", str(weights / "last.pt")]) == 0
    assert seen["map"] == (2, 0)
    best = yb.load_yolov5_checkpoint(weights / "best.pt")
    assert "distill" not in best and yb.num_classes(best["model"]) == 2

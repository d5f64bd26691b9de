"""The benchmarks' bookkeeping (no training): kd_gain's run order, the baselines its report divides by, a run the
plan would train twice (the yolov5s alone of plan `converged` is its teacher's run), and unlabeled_gain's rows."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from yolodistill.quickstart import Plan


def _load(name: str):
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)  # unlabeled_gain imports kd_gain
    try:
        spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="module")
def kd_gain():
    return _load("kd_gain")


def test_a_run_comes_after_its_teacher_start_and_baseline(kd_gain):
    assert kd_gain.with_dependencies(["output"]) == ["teacher yolov5s", "yolov5n alone", "output"]
    order = kd_gain.with_dependencies(["fine-tuned, output"])
    assert set(order) == {"teacher yolov5s", "yolov5n alone", "fine-tuned teacher yolov5s",
                          "fine-tuned yolov5n alone", "fine-tuned, output"}
    for label in order:
        run = kd_gain.RUNS[label]
        for need in (run.teacher, run.init, kd_gain.baseline(label)):
            assert need is None or order.index(need) < order.index(label), (need, label)


def test_every_taught_run_has_a_baseline_trained_alike(kd_gain):
    for label, run in kd_gain.RUNS.items():
        base = kd_gain.baseline(label)
        if run.teacher is None:
            assert base is None
            continue
        alone = kd_gain.RUNS[base]
        assert alone.teacher is None and (alone.model, alone.init, alone.target, alone.epochs) == (
            run.model, run.init, run.target, run.epochs), label


def test_a_run_trained_exactly_like_a_finished_one_is_not_trained_again(kd_gain):
    converged = Plan.named("converged")
    assert converged.teacher_epochs == converged.student_epochs
    done = {"teacher yolov5s": {"map": 0.5}}
    assert kd_gain.same_training("yolov5s alone", done, converged) == "teacher yolov5s"
    assert kd_gain.same_training("yolov5n alone", done, converged) is None
    # the teacher trained longer than the students: two different runs
    assert kd_gain.same_training("yolov5s alone", done, replace(converged, student_epochs=30)) is None
    # a copy is never the original another run is matched to
    done["yolov5s alone"] = {"map": 0.5, "same_as": "teacher yolov5s"}
    assert kd_gain.same_training("teacher yolov5s", {"yolov5s alone": done["yolov5s alone"]}, converged) is None


def test_a_fine_tuning_set_is_as_hard_as_the_data_its_models_were_trained_on(kd_gain):
    for plan, finetune in {"benchmark": "finetune", **kd_gain.FINETUNE_PLANS}.items():
        source, target = Plan.named(plan), Plan.named(finetune)
        assert target.difficulty == source.difficulty and target.style != source.style, (plan, finetune)


def test_the_epoch_a_taught_run_reaches_its_baselines_best(kd_gain):
    assert kd_gain.first_epoch_at([0.1, 0.3, 0.5, 0.4], 0.45) == 3
    assert kd_gain.first_epoch_at([0.1, 0.3, 0.5], 0.5) == 3  # reaching it counts
    assert kd_gain.first_epoch_at([0.1, 0.3], 0.5) is None


def test_every_unlabeled_gain_row_is_a_valid_training():
    from yolodistill.train_options import TrainOptions

    unlabeled_gain = _load("unlabeled_gain")
    plan = Plan.named("benchmark")
    for label, (unlabeled, kind, more) in unlabeled_gain.ROWS.items():
        fields = {**unlabeled_gain.options(kind, plan, 0.25), **more}
        TrainOptions(data="d.yaml", **fields)  # a misspelt field fails here, not an hour into a benchmark
        assert unlabeled in (None, "rest", "textured"), label
        assert ("pseudo_labels" in fields) == ("pseudo" in label), label
    pseudo = unlabeled_gain.options("pseudo", plan, 0.25)
    assert pseudo["pseudo_labels"] == 0.25 and pseudo["d_weight"] == 0.0  # the teacher's boxes, no soft terms
    assert set(unlabeled_gain.SCREENS) < set(unlabeled_gain.ROWS)

"""`yolodistill quickstart --fast` end to end, and its teacher cache across reruns."""

from __future__ import annotations

import logging

import pytest

from yolodistill.cli import main
from yolodistill.quickstart import Plan, prepare_data, prepare_teacher
from yolodistill.yolo_backend import load_yolov5_checkpoint

pytestmark = pytest.mark.slow


def test_quickstart_fast_then_reuses_data_and_teacher(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="yolodistill")
    out = tmp_path / "qs"
    # --noplots: yolov5's plots are tests/test_plots.py's; here they would only add seconds per run
    assert main(["quickstart", "--fast", "--out", str(out), "--noplots"]) == 0
    assert not list(out.glob("*/labels.jpg")) and not list(out.glob("*/results.png"))
    table = (out / "summary.txt").read_text()
    for label in ("teacher yolov5s", "student yolov5n alone", "student yolov5n distilled, labeled",
                  "student yolov5n distilled, + unlabeled"):
        assert label in table
    assert (out / "map_per_epoch.png").stat().st_size > 0
    assert "quickstart finished in" in table and "teacher" in table.splitlines()[-1]  # minutes per stage
    # a gap line per distilled student; the fourth learned from the 32 unlabeled images beside the labeled ones
    assert "distilled, labeled: " in table and "distilled, + unlabeled: " in table
    assert "points test mAP50-95 over the student alone" in table
    assert len(list((out / "data" / "images" / "unlabeled").iterdir())) == 32
    assert "unlabeled: 32 images" in "\n".join(r.getMessage() for r in caplog.records)
    # val chose best.pt, test scores it: both columns, every figure a mAP
    header, _, *rows = table.splitlines()
    assert "val mAP50-95" in header and "test mAP50-95" in header
    for line in rows[:4]:
        val_map, test50, test_map = (float(v) for v in line.split()[-4:-1])
        assert 0 <= test_map <= test50 <= 1 and 0 <= val_map <= 1
    assert (out / "data" / "images" / "test").is_dir() and len(list((out / "data" / "images" / "test").iterdir())) == 16
    assert (out / "distilled" / "results.csv").read_text().count("distill/feature") == 1
    # it ends by deploying: the distilled student's ONNX file and the teacher-vs-student benchmark
    # the distilled student val prefers is the one deployed
    assert len(list(out.glob("*/weights/best.onnx"))) == 1
    assert (out / "benchmark" / "benchmark.png").stat().st_size > 0
    assert "faster (GFLOPs" in table and "onnxruntime on CPU" in table

    # A rerun reuses the dataset and the finished teacher (the stages a rerun repeats, called as run() does) ...
    plan = Plan.named("fast")
    caplog.clear()
    data = prepare_data(out, plan)
    assert prepare_teacher(out, plan, data, "cpu") == out / "teacher" / "weights" / "best.pt"
    messages = [r.getMessage() for r in caplog.records]
    assert any("Reusing dataset" in m for m in messages) and any("Reusing cached teacher" in m for m in messages)

    # ... and a broken teacher file (as a crash could leave) is never reused: it is trained again.
    best = out / "teacher" / "weights" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    (out / "teacher" / "weights" / "last.pt").unlink()
    caplog.clear()
    assert prepare_teacher(out, plan, data, "cpu") == best
    assert not any("Reusing cached teacher" in r.getMessage() for r in caplog.records)
    assert best.stat().st_size > 100_000 and load_yolov5_checkpoint(best)["epoch"] == -1


def test_table_gives_the_share_of_the_gap_closed():
    from yolodistill.quickstart import format_table, gap_closed

    def row(name, m):
        return {"model": name, "params": 1e6, "gflops": 1.0, "mAP50": m, "mAP50-95": m, "latency_ms": 1.0}

    table = format_table([row("teacher", 0.5), row("alone", 0.3), row("distilled", 0.4)])
    assert table.splitlines()[-1] == ("distillation: +10.0 points val mAP50-95 over the student alone; closes 50% "
                                      "of the teacher's 20.0-point lead")
    # with a test split the share is the test split's: val chose best.pt
    tested = [{**row(name, m), "test mAP50": t, "test mAP50-95": t}
              for name, m, t in (("teacher", 0.5, 0.45), ("alone", 0.3, 0.25), ("distilled", 0.4, 0.3))]
    assert format_table(tested).splitlines()[-1] == ("distillation: +5.0 points test mAP50-95 over the student "
                                                     "alone; closes 25% of the teacher's 20.0-point lead")
    assert gap_closed(0.3, 0.3, 0.35) is None
    assert "not ahead" in format_table([row("teacher", 0.2), row("alone", 0.3), row("distilled", 0.3)])


def test_table_with_the_unlabeled_student_gives_a_share_per_distilled_student():
    from yolodistill.quickstart import format_table

    rows = [{"model": name, "params": 1e6, "gflops": 1.0, "mAP50": m, "mAP50-95": m, "latency_ms": 1.0,
             "test mAP50": t, "test mAP50-95": t}
            for name, m, t in (("teacher yolov5s", 0.5, 0.5), ("student yolov5n alone", 0.3, 0.3),
                               ("student yolov5n distilled, labeled", 0.4, 0.35),
                               ("student yolov5n distilled, + unlabeled", 0.45, 0.4))]
    assert format_table(rows).splitlines()[-2:] == [
        "distilled, labeled: +5.0 points test mAP50-95 over the student alone; closes 25% of the teacher's "
        "20.0-point lead",
        "distilled, + unlabeled: +10.0 points test mAP50-95 over the student alone; closes 50% of the teacher's "
        "20.0-point lead"]

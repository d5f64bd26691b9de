"""`yolodistill quickstart --fast` end to end, and its teacher cache across reruns."""

from __future__ import annotations

import logging

import pytest

from yolodistill.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_fast_then_rerun_reuses_teacher(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="yolodistill")
    out = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    table = (out / "summary.txt").read_text()
    for label in ("teacher yolov5s", "student yolov5n alone", "student yolov5n distilled"):
        assert label in table
    assert (out / "map_per_epoch.png").stat().st_size > 0
    assert "quickstart finished in" in table and "teacher" in table.splitlines()[-1]  # minutes per stage
    assert (out / "distilled" / "results.csv").read_text().count("distill/feature") == 1
    # it ends by deploying: the distilled student's ONNX file and the teacher-vs-student benchmark
    assert (out / "distilled" / "weights" / "best.onnx").stat().st_size > 100_000
    assert (out / "benchmark" / "benchmark.png").stat().st_size > 0
    assert "faster (GFLOPs" in table and "onnxruntime on CPU" in table

    # A rerun reuses the finished teacher ...
    caplog.clear()
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    assert any("Reusing cached teacher" in r.getMessage() for r in caplog.records)

    # ... and a broken teacher file (as a crash could leave) is never reused: it is trained again.
    best = out / "teacher" / "weights" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    (out / "teacher" / "weights" / "last.pt").unlink()
    caplog.clear()
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    assert not any("Reusing cached teacher" in r.getMessage() for r in caplog.records)
    assert best.stat().st_size > 100_000

"""`yolodistill benchmark`: the teacher-vs-student table (onnxruntime, torch, classifiers), its ratios, the timing
loop and the FLOP count, on tiny CPU models."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from yolodistill.deploy.benchmark import COLUMNS, RATIO_COLUMNS, ModelResult, gflops, ratio_row, time_side_by_side
from yolodistill.deploy.deployable import CLASSIFY, DETECT, Deployable

from .conftest import CLASSIFY_IMGSZ, IMGSZ
from .deploy_helpers import _one_thread, one_line_error, run, save_yolov5n  # noqa: F401 -- torch on one thread here too

pytestmark = pytest.mark.float_sensitive  # its runs export through the parity check

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_benchmark_dir(out: Path, n_models: int, task: str, *, memory: bool = True) -> list[dict]:
    rows = read_csv(out / "benchmark.csv")
    assert len(rows) == n_models and list(rows[0]) == list(COLUMNS)
    assert all(r["task"] == task for r in rows) and len({r["model"] for r in rows}) == n_models
    for r in rows:
        for col in COLUMNS[2:]:
            if col == "peak_memory_MB" and not memory:
                assert math.isnan(float(r[col]))
                continue
            assert math.isfinite(float(r[col])) and float(r[col]) > 0, (col, r)
        assert float(r["latency_ms_p90"]) >= float(r["latency_ms_median"])
    ratios = read_csv(out / "ratios.csv")
    assert len(ratios) == n_models - 1 and list(ratios[0]) == ["model", *RATIO_COLUMNS]
    assert ratios[0]["model"] == f"{rows[1]['model']} vs {rows[0]['model']}"
    for col in RATIO_COLUMNS:
        if col == "memory_x" and not memory:
            continue
        assert math.isfinite(float(ratios[0][col])), col
    assert (out / "benchmark.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "benchmark.json").is_file() and (out / "benchmark.txt").is_file()
    return rows


@pytest.mark.slow
def test_benchmark_teacher_vs_student_onnxruntime(teacher_weights, tmp_path, capsys):
    student = save_yolov5n(tmp_path / "yolov5n.pt")
    capsys.readouterr()
    assert run("benchmark", "--weights", teacher_weights, student, "--runs", "6", "--warmup", "1",
               "--imgsz", IMGSZ, "--project", tmp_path, "--name", "b") == 0
    out = tmp_path / "b"
    rows = check_benchmark_dir(out, 2, DETECT)
    assert [r["model"] for r in rows] == ["best", "yolov5n"]
    assert float(rows[0]["params_M"]) > 3 * float(rows[1]["params_M"])  # yolov5s vs yolov5n
    assert float(rows[0]["GFLOPs"]) > 3 * float(rows[1]["GFLOPs"])
    ratios = read_csv(out / "ratios.csv")[0]
    assert float(ratios["params_x"]) == pytest.approx(float(rows[0]["params_M"]) / float(rows[1]["params_M"]))
    assert {p.name for p in out.glob("*.onnx")} == {"best.onnx", "yolov5n.onnx"}
    printed = capsys.readouterr().out
    assert "median ms" in printed and "yolov5n vs best" in printed and "onnxruntime on CPU" in printed


@pytest.mark.slow
def test_benchmark_torch_backend(teacher_weights, tmp_path, capsys):
    student = save_yolov5n(tmp_path / "yolov5n.pt")
    assert run("benchmark", "--weights", teacher_weights, student, "--backend", "torch", "--runs", "6",
               "--warmup", "1", "--imgsz", IMGSZ, "--project", tmp_path, "--name", "b") == 0
    check_benchmark_dir(tmp_path / "b", 2, DETECT)
    assert not list((tmp_path / "b").glob("*.onnx"))  # torch times the checkpoints themselves
    assert "torch on CPU" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_classifiers(shape_teachers, tmp_path, capsys):
    assert run("benchmark", "--weights", *shape_teachers, "--runs", "6", "--warmup", "1", "--no-memory",
               "--project", tmp_path, "--name", "c") == 0
    rows = check_benchmark_dir(tmp_path / "c", 2, CLASSIFY, memory=False)
    assert [r["model"] for r in rows] == ["cnn_best", "cnn_small_best"]  # both best.pt: the run folder tells
    assert float(rows[0]["params_M"]) > float(rows[1]["params_M"])  # cnn vs cnn_small
    assert f"{CLASSIFY_IMGSZ}x{CLASSIFY_IMGSZ}" in capsys.readouterr().out


def test_benchmark_tensorrt_without_cuda_is_one_line(teacher_weights, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_error(capsys, "benchmark", "--weights", teacher_weights, "--backend", "tensorrt",
                          "--imgsz", IMGSZ, "--project", tmp_path, "--name", "t")
    assert "needs CUDA" in line


def test_ratio_row_by_hand():
    ref = ModelResult(model="teacher", task=DETECT, params_M=8.0, GFLOPs=16.0, latency_ms_median=10.0,
                      latency_ms_p90=12.0, throughput_img_s=100.0, peak_memory_MB=200.0, file_MB=30.0)
    student = ModelResult(model="student", task=DETECT, params_M=2.0, GFLOPs=4.0, latency_ms_median=4.0,
                          latency_ms_p90=5.0, throughput_img_s=250.0, peak_memory_MB=50.0, file_MB=8.0)
    row = ratio_row(ref, student)
    assert list(row) == ["model", *RATIO_COLUMNS]
    assert row == {"model": "student vs teacher", "speed_x": 2.5, "throughput_x": 2.5, "memory_x": 4.0,
                   "params_x": 4.0, "GFLOPs_x": 4.0, "speed_over_GFLOPs_ratio": 0.625}
    unmeasured = ModelResult(model="s", task=DETECT, params_M=0.0, GFLOPs=4.0, latency_ms_median=4.0)
    row = ratio_row(ref, unmeasured)  # no memory, no throughput, zero params: nan, not an error
    assert math.isnan(row["memory_x"]) and math.isnan(row["throughput_x"]) and math.isnan(row["params_x"])
    assert row["speed_x"] == 2.5 and row["speed_over_GFLOPs_ratio"] == 0.625


def test_time_side_by_side_interleaves_and_counts():
    calls = []
    runners = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = time_side_by_side(runners, runs=6, warmup=2, rounds=3, progress=False)
    assert [len(t) for t in times] == [6, 6] and all(t >= 0 for ts in times for t in ts)
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3


@pytest.mark.parametrize("runs", [6, 15])
def test_time_side_by_side_times_the_runs_asked_for(runs):
    times = time_side_by_side([lambda: None, lambda: None], runs=runs, warmup=0, progress=False)
    assert [len(t) for t in times] == [runs, runs]


def test_gflops_counts_two_per_multiply_add():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    dep = Deployable(model=model.eval(), task=CLASSIFY, imgsz=(6, 6), source=Path("m.pt"), output_names=["logits"],
                     metadata={"mean": [0.0] * 3, "std": [1.0] * 3})
    assert gflops(dep) * 1e9 == pytest.approx(2 * (8 * 3 * 9 * 36 + 5 * 8 * 36))

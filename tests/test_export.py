"""ONNX export with parity, INT8 QAT to Q/DQ graphs, and the one-line errors of `yolodistill export` (and of
`benchmark` on a bad checkpoint). Tiny models on the CPU, onnxruntime only (TensorRT is
tests/test_deploy_tensorrt.py's; running an exported file is tests/test_runtime.py's)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolodistill import yolo_backend as yb
from yolodistill.compress import quant as q
from yolodistill.deploy.deployable import CLASSIFY, DETECT
from yolodistill.deploy.qdq_coverage import qdq_coverage

from .conftest import CLASSIFY_IMGSZ, IMGSZ, SHAPES
from .deploy_helpers import (TRT_OK, _one_thread, assert_faithful, copy_weights, detector_model,  # noqa: F401
                             leftovers, one_line_error, run)

pytestmark = pytest.mark.float_sensitive  # exports through the parity check; onnxruntime against PyTorch

N_BOXES = 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # yolov5 at 64 px: 3 anchors on 8x8, 4x4, 2x2 grids


# ---- helpers -------------------------------------------------------------------------------------------------------

def metadata(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def opset(proto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]



# ---- 1. ONNX export and parity -------------------------------------------------------------------------------------

def _the_one_onnx_file(folder):
    """The export beside the weights is student.onnx and nothing else is left there; a valid graph of opset 17+."""
    path = folder / "student.onnx"
    assert leftovers(folder) == ["student.onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert opset(proto) >= 17
    return path, proto, metadata(proto)


def test_detector_export_beside_weights_with_parity(teacher_weights, tmp_path):
    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ) == 0
    path, proto, meta = _the_one_onnx_file(tmp_path)
    assert ast.literal_eval(meta["names"]) == {0: "rect", 1: "circle"}
    assert int(meta["stride"]) == 32 and meta["task"] == DETECT
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, IMGSZ, IMGSZ]
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    got = ort_run(path, x.numpy())
    assert got.shape == (1, N_BOXES, 5 + 2)
    assert_faithful(got, detector_model(weights), x)


def test_detector_dynamic_batch_runs_at_batch_3(teacher_weights, tmp_path):
    weights = copy_weights(teacher_weights, tmp_path)
    out = tmp_path / "dyn" / "dynamic.onnx"  # --output into a folder that does not exist yet
    assert run("export", "--weights", weights, "--imgsz", IMGSZ, "--dynamic", "--output", out) == 0
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(4))
    got = ort_run(out, x.numpy())
    assert got.shape == (3, N_BOXES, 7)
    assert_faithful(got, detector_model(weights), x)
    assert not (tmp_path / "student.onnx").exists()


def test_detector_half_export_takes_float16(teacher_weights, tmp_path):
    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ, "--half") == 0
    proto = onnx.load(str(tmp_path / "student.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert metadata(proto)["precision"] == "fp16"
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(5))
    got = ort_run(tmp_path / "student.onnx", x.numpy().astype(np.float16))
    assert got.dtype == np.float16
    assert_faithful(got, detector_model(weights), x, precision="fp16")


def test_detector_export_simplified_keeps_parity(teacher_weights, tmp_path):
    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ, "--simplify") == 0
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(6))
    assert_faithful(ort_run(tmp_path / "student.onnx", x.numpy()), detector_model(weights), x)


def test_classifier_export_beside_weights_with_parity(shape_teachers, tmp_path):
    from yolodistill.classification.models import load_classifier

    weights = copy_weights(shape_teachers[0], tmp_path)
    assert run("export", "--weights", weights) == 0
    path, proto, meta = _the_one_onnx_file(tmp_path)
    assert ast.literal_eval(meta["names"]) == dict(enumerate(SHAPES)) and meta["task"] == CLASSIFY
    assert ast.literal_eval(meta["imgsz"]) == [CLASSIFY_IMGSZ, CLASSIFY_IMGSZ]
    assert [o.name for o in proto.graph.output] == ["logits"]
    model, _ = load_classifier(weights)
    x = torch.randn(1, 3, CLASSIFY_IMGSZ, CLASSIFY_IMGSZ, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_run(path, x.numpy())
    assert got.shape == ref.shape == (1, len(SHAPES))
    assert_faithful(got, model, x, CLASSIFY)


def test_classifier_dynamic_and_half(shape_teachers, tmp_path):
    from yolodistill.classification.models import load_classifier

    weights = copy_weights(shape_teachers[0], tmp_path)
    assert run("export", "--weights", weights, "--dynamic", "--output", tmp_path / "dyn.onnx") == 0
    assert run("export", "--weights", weights, "--half", "--output", tmp_path / "half.onnx") == 0
    model, _ = load_classifier(weights)
    x = torch.randn(3, 3, CLASSIFY_IMGSZ, CLASSIFY_IMGSZ, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model(x).numpy()
    dynamic = ort_run(tmp_path / "dyn.onnx", x.numpy())
    assert dynamic.shape == ref.shape
    assert_faithful(dynamic, model, x, CLASSIFY)
    proto = onnx.load(str(tmp_path / "half.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    got = ort_run(tmp_path / "half.onnx", x[:1].numpy().astype(np.float16))
    assert_faithful(got, model, x[:1], CLASSIFY, precision="fp16")


# ---- 2. --qat detection end to end ---------------------------------------------------------------------------------

def constant_names(proto) -> set[str]:
    return {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                         for o in n.output}


@pytest.mark.slow
def test_qat_detector_trains_exports_qdq_and_validates(teacher_weights, tiny_data, tmp_path, capsys):
    assert run("train", "--weights", teacher_weights, "--t_weights", teacher_weights, "--d_output", "--qat",
               "--data", tiny_data, "--imgsz", IMGSZ, "--epochs", "1", "--batch-size", "8", "--workers", "0",
               "--device", "cpu", "--noplots", "--noautoanchor", "--qat-calib-images", "16",
               "--project", tmp_path, "--name", "q") == 0
    best = tmp_path / "q" / "weights" / "best.pt"

    ckpt = yb.load_yolov5_checkpoint(best)
    assert ckpt["quant"]["format"] == q.QUANT_FORMAT == "yolodistill-int8/2"
    layers = ckpt["quant"]["layers"]
    assert layers and all(float(v["input"]) > 0 and v["weight"].dim() == 1 for v in layers.values())
    blocks = ckpt["quant"]["blocks"]  # yolov5s: 7 residual adds (2 ranges each), 8 C3 and 4 neck concatenations, SPPF
    assert len(blocks) == 2 * 7 + 8 + 4 + 1 and all(float(v) > 0 for v in blocks.values())
    model = ckpt["model"]
    assert type(model).__name__ == "DetectionModel"
    assert not any(isinstance(m, (q.QuantConv2d, q.QuantLinear, q.FakeQuantizer)) or type(m).__name__.startswith(
        "Quant") for m in model.modules())
    assert not any("quantizer" in k for k in model.state_dict())
    assert {n for n, m in model.named_modules() if type(m) is nn.Conv2d} == set(layers)

    assert run("export", "--weights", best) == 0  # at the size it was trained at (64)
    path = best.with_suffix(".onnx")
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert metadata(proto)["precision"] == "int8"
    constants = constant_names(proto)
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert all(name in constants for name in node.input[1:]), (node.name, list(node.input))
    coverage = qdq_coverage(proto, float_scopes=("/model.24",))  # every conv, residual add and concat in INT8
    assert coverage.complete and coverage.checked == {"Conv": 60, "Add": 7, "Concat": 13}
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(10)).numpy()
    out = ort_run(path, x)
    assert out.shape == (1, N_BOXES, 7) and np.isfinite(out).all()
    if not TRT_OK:  # a QAT student's engine is INT8 without asking
        line = one_line_error(capsys, "export", "--weights", best, "--include", "engine", "--output",
                              tmp_path / "engine" / "best.onnx")
        assert "trtexec --onnx=" in line and "--int8" in line

    assert run("val", "--weights", path, "--data", tiny_data, "--imgsz", IMGSZ, "--workers", "0",
               "--device", "cpu", "--project", tmp_path, "--name", "v") == 0


def test_int8_without_qat_or_data_is_refused(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ, "--int8")
    assert "--int8 needs INT8 ranges" in line and "--data data.yaml" in line and "--qat" in line
    assert leftovers(tmp_path) == []


# ---- 3. bad input: one line on stderr, exit 1 ----------------------------------------------------------------------

def _bad_checkpoint(kind: str, tmp_path: Path, teacher_weights: Path) -> tuple[Path, str]:
    if kind == "neither":
        path = tmp_path / "foo.pt"
        torch.save({"foo": torch.zeros(1)}, path)
        return path, "neither a YOLOv5 detection checkpoint nor a yolodistill classifier checkpoint"
    if kind == "missing":
        return tmp_path / "nope.pt", "not found"
    path = tmp_path / "cut.pt"
    data = Path(teacher_weights).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated or corrupt"


@pytest.mark.parametrize("command", ["export", "benchmark"])
@pytest.mark.parametrize("kind", ["neither", "missing", "truncated"])
def test_bad_checkpoint(kind, command, capsys, teacher_weights, tmp_path):
    path, message = _bad_checkpoint(kind, tmp_path, teacher_weights)
    extra = ["--project", tmp_path / "runs", "--name", "b"] if command == "benchmark" else []
    line = one_line_error(capsys, command, "--weights", path, *extra)
    assert message in line and path.name in line
    assert leftovers(tmp_path) == []


def test_engine_without_tensorrt_writes_the_onnx_and_prints_trtexec(teacher_weights, tmp_path, capsys):
    if TRT_OK:
        pytest.skip("TensorRT can build engines here")
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ, "--include", "engine")
    onnx_path = tmp_path / "student.onnx"
    assert f"trtexec --onnx={onnx_path} --saveEngine={tmp_path / 'student.engine'}" in line
    assert f"--optShapes=images:1x3x{IMGSZ}x{IMGSZ}" in line
    assert "--int8" not in line and "--sparsity" not in line  # a plain FP32 student
    assert onnx_path.is_file() and leftovers(tmp_path) == ["student.onnx"]
    assert not (tmp_path / "student.engine").exists()
    onnx.checker.check_model(onnx.load(str(onnx_path)))


def test_output_that_cannot_be_written(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    (tmp_path / "blocker").write_text("a regular file, not a folder")
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ,
                          "--output", tmp_path / "blocker" / "sub" / "m.onnx")
    assert "cannot create" in line and "blocker" in line
    (tmp_path / "folder.onnx").mkdir()
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ,
                          "--output", tmp_path / "folder.onnx")
    assert "is a folder" in line
    assert leftovers(tmp_path) == ["folder.onnx"] and not any((tmp_path / "folder.onnx").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder.onnx", "student.pt"]


class _OffsetSession:
    """An onnxruntime session whose first output is shifted by `offset`: a file that disagrees with PyTorch."""

    def __init__(self, session, offset: float):
        self.session, self.offset = session, offset

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feed):
        out = self.session.run(names, feed)
        return [out[0] + np.asarray(self.offset, out[0].dtype), *out[1:]]


def test_parity_failure_writes_nothing(teacher_weights, tmp_path, capsys, monkeypatch):
    from yolodistill.runtime import onnx_file

    real = onnx_file.ort_session
    monkeypatch.setattr(onnx_file, "ort_session", lambda path, **kw: _OffsetSession(real(path, **kw), 0.5))
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ)
    assert "parity check failed (fp32)" in line and "differs from PyTorch by up to 0.5" in line
    # the worst group named, with its error against PyTorch's own rounding: 0.5 on objectness in [0, 1] is the
    # largest multiple of the noise
    assert "off exact (float64) arithmetic" in line and "rounding reaches" in line
    assert "was not written" in line and "--tolerance" in line
    assert leftovers(tmp_path) == []  # neither the .onnx nor the hidden .student.onnx.*.tmp
    # --tolerance relaxes the rule: the same offset passes under atol 1
    assert run("export", "--weights", weights, "--imgsz", IMGSZ, "--tolerance", "1", "0") == 0
    assert leftovers(tmp_path) == ["student.onnx"]


def test_opset_below_17(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ, "--opset", "13")
    assert "--opset 13" in line and "17" in line
    assert leftovers(tmp_path) == []


def test_unknown_include_format(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--include", "tflite")
    assert "--include tflite" in line and "onnx" in line and "engine" in line
    assert leftovers(tmp_path) == []


def test_imgsz_not_a_multiple_of_the_stride(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", "50")
    assert "not a multiple" in line and "32" in line
    assert leftovers(tmp_path) == []

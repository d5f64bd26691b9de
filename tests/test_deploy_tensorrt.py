"""TensorRT engine building and running: command lines, ONNX checks and error paths everywhere; real engines only
where TensorRT and a CUDA device are present (the skip reason says which is missing)."""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.nn import functional as F

from yolodistill.deploy import tensorrt as trtmod
from yolodistill.deploy.tensorrt import build_engine, onnx_has_qdq, onnx_is_fp16, trtexec_command
from yolodistill.errors import UserError
from yolodistill.runtime import tensorrt_engine
from yolodistill.runtime.tensorrt_engine import TensorRTRunner, TensorRTUnavailable, tensorrt_status

TRT_OK, TRT_REASON = tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)


def trt_major() -> int:
    import tensorrt

    return int(tensorrt.__version__.split(".")[0])


# ---- tiny ONNX files made with onnx.helper ---------------------------------------------------------------------

def save_conv_onnx(path: Path, *, dtype: int = TensorProto.FLOAT, input_dtype: int | None = None,
                   dims=(1, 3, 8, 8), qdq: bool = False, qdq_in_subgraph: bool = False) -> Path:
    """A one-conv ONNX (input `images`); options make its weights or input float16, or add Q/DQ nodes."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    weight = helper.make_tensor("w", dtype, (4, 3, 3, 3), np.ones((4, 3, 3, 3), np_dtype).tobytes(), raw=True)
    conv_in = "images"
    nodes, inits = [], [weight]
    if qdq:
        inits += [helper.make_tensor("s", TensorProto.FLOAT, (), [0.05]),
                  helper.make_tensor("z", TensorProto.INT8, (), [0])]
        nodes += [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        conv_in = "dq"
    nodes.append(helper.make_node("Conv", [conv_in, "w"], ["output0"], pads=[1, 1, 1, 1]))
    if qdq_in_subgraph:  # the Q/DQ pair sits only inside an If branch
        inits += [helper.make_tensor("s", TensorProto.FLOAT, (), [0.05]),
                  helper.make_tensor("z", TensorProto.INT8, (), [0]),
                  helper.make_tensor("cond", TensorProto.BOOL, (), [True])]
        branch = helper.make_graph([helper.make_node("QuantizeLinear", ["output0", "s", "z"], ["bq"]),
                                    helper.make_node("DequantizeLinear", ["bq", "s", "z"], ["bdq"])], "branch", [],
                                   [helper.make_tensor_value_info("bdq", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["cond"], ["final"], then_branch=branch, else_branch=branch))
    out_name = "final" if qdq_in_subgraph else "output0"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", input_dtype or dtype, dims)],
                              [helper.make_tensor_value_info(out_name, dtype, None)], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# ---- trtexec command lines -------------------------------------------------------------------------------------

def test_trtexec_fp32_static_is_the_tensorrt_10_line_by_default():
    assert trtexec_command("m.onnx", "m.engine") == \
        "trtexec --onnx=m.onnx --saveEngine=m.engine --memPoolSize=workspace:4096M"


def test_trtexec_tensorrt_10_half_int8_dynamic_shapes():
    line = trtexec_command("m.onnx", "m.engine", half=True, int8=True, min_shape=(1, 3, 640, 640),
                           shape=(4, 3, 640, 640), max_shape=(8, 3, 640, 640), workspace_gb=2, trt_major=10)
    assert line == ("trtexec --onnx=m.onnx --saveEngine=m.engine --fp16 --int8 --minShapes=images:1x3x640x640 "
                    "--optShapes=images:4x3x640x640 --maxShapes=images:8x3x640x640 --memPoolSize=workspace:2048M")


def test_trtexec_tensorrt_10_int8_runs_its_float_layers_in_fp16():
    """A Q/DQ graph's unquantized layers (the Detect head's decoding) in FP16, as NVIDIA's YOLO QAT samples build."""
    assert trtexec_command("m.onnx", "m.engine", int8=True) == \
        "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16 --int8 --memPoolSize=workspace:4096M"


def test_trtexec_tensorrt_11_has_no_precision_flags_and_is_strongly_typed():
    line = trtexec_command("m.onnx", "m.engine", half=True, int8=True, input_name="x", shape=(2, 3, 32, 32),
                           workspace_gb=0.5, trt_major=11)
    assert line == ("trtexec --onnx=m.onnx --saveEngine=m.engine --stronglyTyped --minShapes=x:2x3x32x32 "
                    "--optShapes=x:2x3x32x32 --maxShapes=x:2x3x32x32 --memPoolSize=workspace:512M")
    assert "--fp16" not in line and "--int8" not in line


def test_trtexec_quotes_paths_for_the_shell():
    line = trtexec_command("my runs/best.onnx", "my runs/best.engine")
    assert shlex.split(line)[1:3] == ["--onnx=my runs/best.onnx", "--saveEngine=my runs/best.engine"]


# ---- ONNX checks -----------------------------------------------------------------------------------------------

def test_onnx_checks_on_a_float32_conv(tmp_path):
    path = save_conv_onnx(tmp_path / "fp32.onnx")
    assert not onnx_has_qdq(path) and not onnx_is_fp16(path)


def test_onnx_is_fp16_from_float16_weights_or_input(tmp_path):
    weights = save_conv_onnx(tmp_path / "w16.onnx", dtype=TensorProto.FLOAT16, input_dtype=TensorProto.FLOAT)
    inputs = save_conv_onnx(tmp_path / "in16.onnx", input_dtype=TensorProto.FLOAT16)
    assert onnx_is_fp16(weights) and onnx_is_fp16(inputs)
    assert not onnx_has_qdq(weights)


def test_onnx_has_qdq_in_the_main_graph_and_in_subgraphs(tmp_path):
    assert onnx_has_qdq(save_conv_onnx(tmp_path / "qdq.onnx", qdq=True))
    assert onnx_has_qdq(save_conv_onnx(tmp_path / "sub.onnx", qdq_in_subgraph=True))
    assert not onnx_is_fp16(tmp_path / "qdq.onnx")


def test_torch_fake_quant_exports_as_qdq(tmp_path):
    assert onnx_has_qdq(export(QDQConv().eval(), tmp_path / "qat.onnx"))


def test_unreadable_onnx_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        onnx_has_qdq(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 not a protobuf \x12\x99")
    with pytest.raises(UserError, match="junk.onnx"):
        onnx_is_fp16(tmp_path / "junk.onnx")


# ---- without TensorRT ------------------------------------------------------------------------------------------

@pytest.fixture
def no_tensorrt(monkeypatch):
    for module in (trtmod, tensorrt_engine):  # where engines are built, and where they run
        monkeypatch.setattr(module, "tensorrt_status", lambda: (False, "no TensorRT in this test"))


def test_build_without_tensorrt_ends_with_the_trtexec_line(tmp_path, no_tensorrt):
    onnx_path = save_conv_onnx(tmp_path / "m.onnx")
    with pytest.raises(TensorRTUnavailable, match="no TensorRT in this test") as info:
        build_engine(onnx_path, tmp_path / "m.engine", half=True)
    assert isinstance(info.value, UserError)
    assert str(info.value).endswith(trtexec_command(onnx_path, tmp_path / "m.engine", half=True))
    assert not (tmp_path / "m.engine").exists()


def test_build_without_tensorrt_dynamic_batch_line(tmp_path, no_tensorrt):
    onnx_path = save_conv_onnx(tmp_path / "d.onnx", dims=("batch", 3, 8, 8))
    with pytest.raises(TensorRTUnavailable) as info:
        build_engine(onnx_path, tmp_path / "d.engine", dynamic=True, batch=2, max_batch=4, int8=True)
    assert str(info.value).endswith(trtexec_command(
        onnx_path, tmp_path / "d.engine", int8=True, min_shape=(1, 3, 8, 8), shape=(2, 3, 8, 8), max_shape=(4, 3, 8, 8)))
    assert "timing only" in str(info.value)  # trtexec --int8 without Q/DQ or a calibration cache


def test_build_checks_batch_and_shapes_before_tensorrt(tmp_path, no_tensorrt):
    static = save_conv_onnx(tmp_path / "s.onnx")
    with pytest.raises(UserError, match="fixed batch of 1.*--dynamic"):
        build_engine(static, tmp_path / "s.engine", dynamic=True)
    dyn_size = save_conv_onnx(tmp_path / "hw.onnx", dims=("batch", 3, "height", "width"))
    with pytest.raises(UserError, match="dynamic image size"):
        build_engine(dyn_size, tmp_path / "hw.engine")
    dyn = save_conv_onnx(tmp_path / "b.onnx", dims=("batch", 3, 8, 8))
    with pytest.raises(UserError, match="max batch"):
        build_engine(dyn, tmp_path / "b.engine", batch=8, max_batch=4)
    with pytest.raises(UserError, match="not found"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")


def test_runner_without_tensorrt_says_why(tmp_path, no_tensorrt):
    with pytest.raises(TensorRTUnavailable, match="no TensorRT in this test"):
        TensorRTRunner(tmp_path / "m.engine")


@pytest.mark.parametrize("major, kwargs, message", [
    (11, dict(half=True), "export the ONNX with --half"),
    (11, dict(int8=True), "--int8 --data data.yaml"),
    (10, dict(int8=True), "--int8 --data data.yaml"),  # no calibrator path: INT8 is Q/DQ on 10 as on 11
])
def test_precision_that_this_tensorrt_cannot_build_is_refused(major, kwargs, message):
    args = dict(half=False, int8=False, has_qdq=False, is_fp16=False) | kwargs
    with pytest.raises(UserError, match=message):
        trtmod._check_precision("m.onnx", major, **args)


@pytest.mark.parametrize("major, kwargs", [
    (11, dict(half=True, is_fp16=True)),
    (11, dict(int8=True, has_qdq=True)),
    (10, dict(half=True)),
    (10, dict(int8=True, has_qdq=True)),
    (10, dict(has_qdq=True)),  # a Q/DQ ONNX is INT8 without asking
])
def test_precision_that_this_tensorrt_can_build_is_accepted(major, kwargs):
    args = dict(half=False, int8=False, has_qdq=False, is_fp16=False) | kwargs
    trtmod._check_precision("m.onnx", major, **args)


def test_tensorrt_dtypes_map_to_torch_by_name():
    assert tensorrt_engine._torch_dtype(SimpleNamespace(name="HALF")) is torch.float16
    assert tensorrt_engine._torch_dtype(SimpleNamespace(name="FLOAT")) is torch.float32
    assert tensorrt_engine._torch_dtype(SimpleNamespace(name="INT64")) is torch.int64
    with pytest.raises(UserError, match="FP4"):
        tensorrt_engine._torch_dtype(SimpleNamespace(name="FP4"))


# ---- atomic engine writes --------------------------------------------------------------------------------------

def test_atomic_write_replaces_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"old")
    trtmod._write_bytes_atomic(path, memoryview(b"new engine"), what="TensorRT engine")
    assert path.read_bytes() == b"new engine"
    assert os.listdir(tmp_path) == ["m.engine"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.engine"
    path.write_bytes(b"old")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trtmod.os, "replace", refuse)
    with pytest.raises(UserError, match=f"cannot write TensorRT engine {path}: Permission denied"):
        trtmod._write_bytes_atomic(path, b"new", what="TensorRT engine")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.engine"]


def test_atomic_write_into_a_missing_folder_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "m.engine"
    with pytest.raises(UserError, match=f"cannot write TensorRT engine {path}"):
        trtmod._write_bytes_atomic(path, b"x", what="TensorRT engine")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_atomic_write_into_a_read_only_folder_names_the_path(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match=f"cannot write TensorRT engine {folder / 'm.engine'}"):
            trtmod._write_bytes_atomic(folder / "m.engine", b"x", what="TensorRT engine")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


# ---- with TensorRT and CUDA: real engines ----------------------------------------------------------------------

class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class QDQConv(nn.Module):
    """A conv quantized the way QAT exports it: input per tensor, weight per output channel, symmetric INT8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("w_scale", self.conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127)
        self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 1 / 127, 0, -128, 127)  # inputs lie in [0, 1]
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, self.w_zero, 0, -128, 127)
        return F.conv2d(x, w, self.conv.bias, padding=1)


def export(model: nn.Module, path: Path, x: torch.Tensor | None = None, dynamic: bool = False) -> Path:
    x = torch.rand(1, 3, 16, 16) if x is None else x
    axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["images"],
                          output_names=["output0"], dynamic_axes=axes)
    return path


def reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyConv().eval()


@needs_trt
def test_fp32_engine_matches_torch(tmp_path, tiny_model):
    engine = build_engine(export(tiny_model, tmp_path / "m.onnx"), tmp_path / "m.engine")
    assert engine == tmp_path / "m.engine" and sorted(os.listdir(tmp_path)) == ["m.engine", "m.onnx"]
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    runner = TensorRTRunner(engine)
    (out,) = runner(x)
    np.testing.assert_allclose(out, reference(tiny_model, x), atol=1e-2, rtol=1e-2)  # TF32 may be on
    (gpu_out,) = runner.run_torch(torch.from_numpy(x))
    assert gpu_out.is_cuda and tuple(gpu_out.shape) == out.shape


@needs_trt
def test_fp16_engine_matches_torch(tmp_path, tiny_model):
    if trt_major() >= 11:  # strongly typed: the float16 must already be in the ONNX
        onnx_path = export(tiny_model.cuda().half(), tmp_path / "m.onnx", torch.rand(1, 3, 16, 16).cuda().half())
        tiny_model = tiny_model.float().cpu()
        assert onnx_is_fp16(onnx_path)
    else:
        onnx_path = export(tiny_model, tmp_path / "m.onnx")
    engine = build_engine(onnx_path, tmp_path / "m.engine", half=True)
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    (out,) = TensorRTRunner(engine)(x)
    np.testing.assert_allclose(out.astype(np.float32), reference(tiny_model, x), atol=3e-2, rtol=3e-2)


@needs_trt
def test_tensorrt_11_refuses_fp16_from_a_float32_onnx(tmp_path, tiny_model):
    if trt_major() < 11:
        pytest.skip("TensorRT 10 builds FP16 from a float32 ONNX with its FP16 flag")
    with pytest.raises(UserError, match="--half"):
        build_engine(export(tiny_model, tmp_path / "m.onnx"), tmp_path / "m.engine", half=True)


@needs_trt
def test_dynamic_batch_engine_runs_every_batch_in_its_profile(tmp_path, tiny_model):
    onnx_path = export(tiny_model, tmp_path / "d.onnx", torch.rand(2, 3, 16, 16), dynamic=True)
    runner = TensorRTRunner(build_engine(onnx_path, tmp_path / "d.engine", dynamic=True, batch=2, max_batch=4))
    for n in (1, 3, 4):
        x = np.random.default_rng(n).random((n, 3, 16, 16), dtype=np.float32)
        (out,) = runner(x)
        np.testing.assert_allclose(out, reference(tiny_model, x), atol=1e-2, rtol=1e-2)
    with pytest.raises(UserError, match="outside"):
        runner(np.zeros((5, 3, 16, 16), np.float32))


@needs_trt
def test_int8_engine_from_qdq_onnx_needs_no_calibration(tmp_path):
    torch.manual_seed(0)
    model = QDQConv().eval()
    engine = build_engine(export(model, tmp_path / "q.onnx"), tmp_path / "q.engine", int8=True)
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    (out,) = TensorRTRunner(engine)(x)
    np.testing.assert_allclose(out, reference(model, x), atol=3e-2, rtol=3e-2)


@needs_trt
def test_int8_from_an_onnx_without_qdq_is_refused(tmp_path, tiny_model):
    """No calibrator path on any TensorRT: INT8 ranges come from Q/DQ nodes (QAT, or `export --int8 --data`)."""
    with pytest.raises(UserError, match="--int8 --data"):
        build_engine(export(tiny_model, tmp_path / "m.onnx"), tmp_path / "m.engine", int8=True)
    assert not (tmp_path / "m.engine").exists()

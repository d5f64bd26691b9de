"""INT8 that TensorRT can fuse: quantizers on residual adds and concatenations (yolo_backend/quant_modules.py), shared
scales, the Q/DQ coverage check of exported files (deploy/qdq_coverage.py), format-1 checkpoints, and post-training
INT8 from the command line (`export --int8 --data`). A 10-layer YOLOv5 with every block kind keeps it fast."""

from __future__ import annotations

import io
import warnings
from copy import deepcopy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolodistill import yolo_backend as yb
from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.cli import main
from yolodistill.compress import Compression
from yolodistill.compress import quant as q
from yolodistill.deploy.deployable import DETECT, Deployable
from yolodistill.deploy.onnx_export import QdqCoverageError, export_onnx
from yolodistill.deploy.qdq_coverage import _constants, _in_scopes, qdq_coverage
from yolodistill.errors import UserError
from yolodistill.yolo_backend.quant_modules import QuantBottleneck, QuantC3, QuantConcat, QuantSPP, QuantSPPF

from .conftest import IMGSZ, one_torch_thread

pytestmark = pytest.mark.float_sensitive  # INT8 exports through the parity check

# Conv, C3 with its residual add, SPPF, a neck Concat behind a nearest Upsample, C3 without shortcut, Detect
MINI = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
        "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
        "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "C3", [16]],
                     [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "SPPF", [32, 5]]],
        "head": [[-1, 1, "Conv", [16, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                 [[-1, 2], 1, "Concat", [1]], [-1, 1, "C3", [16, False]], [[8, 5], 1, "Detect", ["nc", "anchors"]]]}
DETECT_SCOPE = "/model.9"
ADDS_AND_CONCATS = {"/model.2/m/m.0/Add", "/model.2/Concat", "/model.4/Concat", "/model.7/Concat", "/model.8/Concat"}
OLD_FORMAT = "yolodistill-int8/1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def mini() -> nn.Module:
    torch.manual_seed(0)
    model = yb.build_model(MINI, nc=2)
    model.names = {0: "rect", 1: "circle"}
    return model.eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def calibrated_export_model(model: nn.Module, *, blocks: bool = True) -> nn.Module:
    """Fused export copy, quantized (with or without block rules) and calibrated on two images."""
    model = yb.export_model(model)
    q.quantize_model(model, blocks=blocks)
    q.calibrate(model, [images()], model)
    return model


def deployable(model: nn.Module, quantized: bool = True) -> Deployable:
    return Deployable(model=model, task=DETECT, imgsz=(IMGSZ, IMGSZ), source=Path("mini.pt"),
                      output_names=["output0"], metadata={"stride": 32, "names": {0: "rect", 1: "circle"}},
                      quantized=quantized, float_scopes=yb.float_scopes(model))


def raw_onnx(model: nn.Module):
    """torch.onnx.export without yolodistill's checks: what an earlier version (or an FP32 export) wrote."""
    x = images(1)
    model(x)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False, input_names=["images"],
                          output_names=["output0"])
    return onnx.load_from_string(buf.getvalue())


def run(*argv) -> int:
    return main([str(a) for a in argv])


def one_line_error(capsys, *argv) -> str:
    capsys.readouterr()
    assert run(*argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"yolodistill {argv[0]}: error: "), lines
    return lines[0]


def old_format_state(model: nn.Module) -> dict:
    """The `quant` entry format 1 wrote: conv inputs and weights only."""
    quantized = deepcopy(model).eval()
    q.quantize_model(quantized, blocks=False)
    q.calibrate(quantized, [images()], quantized)
    state = q.strip_quantizers(quantized)
    return {"format": OLD_FORMAT, "layers": state["layers"]}


# ---- the quantized blocks ------------------------------------------------------------------------------------------

def pass_through(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, q.FakeQuantizer):
            m.calibrating = True  # every quantizer, weights too, hands its input on unchanged
    return model


def test_blocks_get_twins_and_scales_are_shared_where_tensorrt_needs_them(mini):
    model = deepcopy(mini)
    q.quantize_model(model)
    layers = model.model
    assert [type(layers[i]) for i in (2, 4, 7, 8)] == [QuantC3, QuantSPPF, QuantConcat, QuantC3]
    assert type(layers[2].m[0]) is QuantBottleneck and type(layers[8].m[0]).__name__ == "Bottleneck"  # no add there
    iq = lambda conv: conv.conv.input_quantizer  # noqa: E731
    assert iq(layers[2].cv1) is iq(layers[2].cv2)  # both read x
    assert layers[2].cat_quantizer is iq(layers[2].cv3)  # the concatenation's inputs and result at one scale
    assert layers[2].m[0].residual_quantizer is iq(layers[2].m[0].cv1)  # the shortcut is what cv1 reads
    assert layers[2].m[0].branch_quantizer is not layers[2].m[0].residual_quantizer
    assert layers[4].cat_quantizer is iq(layers[4].cv2)
    # across layers: C3 2's output feeds conv 3 and Concat 7; conv 5's output feeds Concat 7 (through the nearest
    # Upsample) and Detect; C3 8 reads the Concat's result: one tensor group, one scale
    assert layers[7].cat_quantizer is iq(layers[3]) is iq(layers[8].cv1) is layers[9].m[1].input_quantizer
    assert iq(layers[5]) is not layers[7].cat_quantizer  # conv 5 reads the SPPF's output: another tensor


def _block_case(mini: nn.Module, block: str):
    """(plain block, input, [its add or concatenation inputs, as the quantized twin computes them], the quantizer
    on them, the module reading the result or None) for one block kind."""
    g = torch.Generator().manual_seed(1)
    if block == "concat":
        x = [torch.randn(2, 16, 8, 8, generator=g), 3 * torch.randn(2, 16, 8, 8, generator=g)]
        return mini.model[7], x, lambda t: list(x), lambda t: t.cat_quantizer, lambda t: None
    if block == "bottleneck":
        x = torch.randn(2, 8, 8, 8, generator=g)
        return (mini.model[2].m[0], x, lambda t: [t.cv2(t.cv1(x))], lambda t: t.branch_quantizer, lambda t: None)
    if block == "c3":
        x = torch.randn(2, 16, 8, 8, generator=g)
        return (mini.model[2], x, lambda t: [t.m(t.cv1(x)), t.cv2(x)], lambda t: t.cat_quantizer, lambda t: t.cv3)
    x = torch.randn(2, 32, 4, 4, generator=g)
    if block == "spp":  # older configs' SPP: parallel pools of 5, 9 and 13
        torch.manual_seed(2)
        spp = QuantSPP.plain_class(32, 32).eval()
        return spp, x, lambda t: [t.cv1(x)] + [m(t.cv1(x)) for m in t.m], lambda t: t.cat_quantizer, lambda t: t.cv2
    return mini.model[4], x, lambda t: _pools(t, x), lambda t: t.cat_quantizer, lambda t: t.cv2


def _pools(sppf: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y0 = sppf.cv1(x)
    y1 = sppf.m(y0)
    y2 = sppf.m(y1)
    return [y0, y1, y2, sppf.m(y2)]


@pytest.mark.parametrize("block", ["bottleneck", "c3", "sppf", "spp", "concat"])
def test_quantized_blocks_equal_plain_when_off_and_move_inputs_by_half_a_step_when_on(mini, block):
    """Quantizers passing through: the twin computes exactly what the plain block does. On: each input of the add or
    concatenation moves by at most half a step, amax / 127 / 2, once amax covers the tensors it reads."""
    plain, x, parts_of, quantizer_of, reader_of = _block_case(mini, block)
    plain = deepcopy(plain).eval()
    wrapper = nn.ModuleList([deepcopy(plain)]).eval()
    q.quantize_model(wrapper)
    twin = wrapper[0]
    q.calibrate(wrapper, [x], twin)
    with torch.no_grad():
        assert torch.equal(pass_through(deepcopy(twin))(x), plain(x))
        parts = parts_of(twin)  # through the twin's quantized convs, as its forward computes them
        fq = quantizer_of(twin)
        fq.amax.copy_(max(p.abs().max() for p in parts))  # the max calibration would give on these exact tensors
        step = float(fq.amax) / 127
        seen = []
        reader = reader_of(twin)
        if reader is not None:  # the concatenation as the conv after it receives it
            reader.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        out = twin(x)
        if block == "bottleneck":  # x: half a step of the residual quantizer (x is what it was calibrated on)
            bound = step / 2 + float(twin.residual_quantizer.amax) / 127 / 2
            got, ref = out, x + parts[0]
        else:
            bound = step / 2
            got, ref = (seen[0] if seen else out), torch.cat(parts, 1)
        diff = (got - ref).abs().max()
        assert 0 < diff <= bound * (1 + 1e-5), (float(diff), bound)


def test_strip_then_attach_round_trips_and_refuses_unequal_shared_ranges(mini):
    model = deepcopy(mini)
    q.quantize_model(model)
    q.calibrate(model, [images()], model)
    x = images(1, seed=5)
    with torch.no_grad():
        quant_out = model(x)[0]
    state = q.strip_quantizers(model)
    assert state["format"] == q.QUANT_FORMAT and len(state["blocks"]) == 6
    assert {type(m).__module__.split(".")[0] for m in model.modules()} <= {"yolov5", "torch"}
    plain_weights = deepcopy(model.state_dict())
    assert not any("quantizer" in k for k in plain_weights)
    q.attach_quantizers(model, state)
    with torch.no_grad():
        assert torch.equal(model(x)[0], quant_out)
    # --resume: a fresh student gets the same quantizers and ranges, and the EMA's plain weights load into it
    resumed = deepcopy(mini)
    Compression(qat=True).prepare(resumed, quant_state=state)
    q.load_plain_state_dict(resumed, plain_weights)
    with torch.no_grad():
        assert torch.equal(resumed(x)[0], quant_out)
    tampered = deepcopy(state)
    tampered["blocks"]["model.7.cat_quantizer"] = tampered["blocks"]["model.7.cat_quantizer"] * 2
    with pytest.raises(ValueError, match="share one scale"):
        q.attach_quantizers(deepcopy(mini), tampered)


# ---- coverage of exported files ------------------------------------------------------------------------------------

def concat_input_scales(proto, *, float_scopes=()) -> dict[str, list]:
    """{Concat node: [scale of each input's DequantizeLinear, or None]}: TensorRT needs them equal to drop it."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    constants = _constants(proto.graph)
    scales = {}
    for node in proto.graph.node:
        if node.op_type == "Concat" and not _in_scopes(node.name, float_scopes):
            dqs = [producer.get(t) for t in node.input]
            scales[node.name] = [constants.get(dq.input[1]) if dq is not None and dq.op_type == "DequantizeLinear"
                                 else None for dq in dqs]
    return scales


def test_coverage_passes_on_a_qat_export_and_concat_inputs_share_one_scale(mini, tmp_path):
    model = calibrated_export_model(mini)
    report = export_onnx(deployable(model), tmp_path / "q.onnx")
    assert report.coverage.complete and report.coverage.checked == {"Conv": 18, "Add": 1, "Concat": 4}
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert qdq_coverage(proto, float_scopes=(DETECT_SCOPE,)).complete
    scales = concat_input_scales(proto, float_scopes=(DETECT_SCOPE,))
    assert set(scales) == ADDS_AND_CONCATS - {"/model.2/m/m.0/Add"}
    for name, values in scales.items():
        assert all(v is not None for v in values) and all(np.array_equal(v, values[0]) for v in values), name
    # one QuantizeLinear per tensor and scale: the exporter's duplicates (cv1 and cv2 both read x) merged
    quantized = [(n.input[0], n.input[1]) for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == len(set(quantized))


def test_half_is_not_applied_to_an_int8_export(mini, tmp_path, caplog):
    """float16 would put a Cast between every DequantizeLinear and its reader: the INT8 file stays float32."""
    report = export_onnx(deployable(calibrated_export_model(mini)), tmp_path / "h.onnx", half=True)
    assert report.precision == "int8" and report.coverage.complete and "--half is not applied" in caplog.text
    assert onnx.load(str(tmp_path / "h.onnx")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_coverage_lists_what_the_old_scheme_and_fp32_leave_float(mini, tmp_path):
    old = qdq_coverage(raw_onnx(calibrated_export_model(mini, blocks=False)), float_scopes=(DETECT_SCOPE,))
    assert not old.complete and {name for name, _ in old.uncovered} == ADDS_AND_CONCATS
    assert "Conv 18/18, Add 0/1, Concat 0/4" in old.summary()
    fp32 = qdq_coverage(raw_onnx(yb.export_model(mini)), float_scopes=(DETECT_SCOPE,))
    names = {name for name, _ in fp32.uncovered}
    assert len(names) == 18 + 5 and "/model.9/m.0/Conv" in names  # Detect's convs are checked ...
    assert not any(n.rpartition("/")[0] == DETECT_SCOPE for n in names)  # ... its box decoding is not
    # export_onnx refuses the old scheme's graph with the nodes named, and writes nothing
    with pytest.raises(QdqCoverageError, match="model.2/m/m.0/Add") as info:
        export_onnx(deployable(calibrated_export_model(mini, blocks=False)), tmp_path / "old.onnx")
    assert "was not written" in str(info.value) and not list(tmp_path.iterdir())


# ---- format-1 checkpoints ------------------------------------------------------------------------------------------

def test_old_format_attaches_as_trained_and_refuses_to_resume_a_detector(mini):
    state = old_format_state(mini)
    old_way = deepcopy(mini)
    q.quantize_model(old_way, blocks=False)
    for name, m in old_way.named_modules():
        if isinstance(m, q.QuantConv2d):
            m.input_quantizer.amax.copy_(state["layers"][name]["input"])
    attached = q.attach_quantizers(deepcopy(mini), state)
    assert not any(isinstance(m, q.QuantizedBlock) for m in attached.modules())
    with torch.no_grad():
        assert torch.equal(attached(images(1))[0], old_way(images(1))[0])
    with pytest.raises(UserError, match="earlier scheme.*--weights instead of --resume"):
        Compression(qat=True).prepare(deepcopy(mini), quant_state=state)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))  # no block rules apply: resumes
    classifier_state = {"format": OLD_FORMAT, "layers": {n: {"input": torch.tensor(1.0), "weight": torch.ones(4)}
                                                         for n in ("0", "2")}}
    Compression(qat=True).prepare(plain, quant_state=classifier_state)
    assert q.is_quantized(plain)


def test_old_format_checkpoint_validates_and_exports_only_recalibrated(mini, tiny_data, tmp_path, capsys):
    from yolodistill.students import load_student

    path = tmp_path / "old.pt"
    save_checkpoint_atomic({"model": deepcopy(mini).half(), "opt": {"imgsz": IMGSZ}, "quant": old_format_state(mini)},
                           path)
    student = load_student(path)
    assert student.quant["format"] == OLD_FORMAT and q.is_quantized(student.model)
    line = one_line_error(capsys, "export", "--weights", path)
    assert "earlier scheme" in line and "--data" in line and "--qat" in line
    assert not list(tmp_path.glob("*.onnx"))
    assert run("export", "--weights", path, "--data", tiny_data, "--calib-images", 8, "--workers", 0) == 0
    assert qdq_coverage(tmp_path / "old.onnx", float_scopes=(DETECT_SCOPE,)).complete


# ---- post-training INT8 from the command line ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_student(mini, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ptq") / "student.pt"
    save_checkpoint_atomic({"model": deepcopy(mini).half(), "opt": {"imgsz": IMGSZ}}, path)
    return path


def test_export_int8_data_writes_a_covered_qdq_onnx_that_val_scores(plain_student, tiny_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="yolodistill")
    out = tmp_path / "ptq.onnx"
    assert run("export", "--weights", plain_student, "--int8", "--data", tiny_data, "--calib-images", 12,
               "--workers", 0, "--output", out) == 0
    proto = onnx.load(str(out))
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8"
    assert qdq_coverage(proto, float_scopes=(DETECT_SCOPE,)).complete
    assert "Q/DQ coverage: Conv 18/18, Add 1/1, Concat 4/4" in caplog.text  # export logs it
    assert run("val", "--weights", out, "--data", tiny_data, "--imgsz", IMGSZ, "--workers", 0, "--device", "cpu",
               "--project", tmp_path, "--name", "v") == 0


def test_export_int8_bad_input_is_one_line(plain_student, tiny_data, tmp_path, capsys):
    out = ["--output", tmp_path / "x.onnx"]
    line = one_line_error(capsys, "export", "--weights", plain_student, "--int8", *out)
    assert "has none" in line and "--data" in line and "--qat" in line
    line = one_line_error(capsys, "export", "--weights", plain_student, "--int8", "--data", tmp_path / "no.yaml", *out)
    assert "dataset yaml not found" in line and "no.yaml" in line
    line = one_line_error(capsys, "export", "--weights", plain_student, "--int8", "--data", tiny_data,
                          "--calib-images", 0, *out)
    assert "--calib-images must be at least 1" in line
    assert not list(tmp_path.iterdir())

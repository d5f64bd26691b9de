"""Deployment: ONNX export with parity, INT8 QAT to Q/DQ graphs, 2:4 sparsity, the benchmark table, and the
one-line errors of `yolodistill export` and `yolodistill benchmark`. Tiny models on the CPU, onnxruntime only
(TensorRT is tests/test_deploy_tensorrt.py's)."""

from __future__ import annotations

import ast
import csv
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolodistill import yolo_backend as yb
from yolodistill.cli import main
from yolodistill.compress import quant as q
from yolodistill.deploy.benchmark import COLUMNS, RATIO_COLUMNS, ModelResult, gflops, ratio_row, time_side_by_side
from yolodistill.deploy.onnx_parity import noise_rule
from yolodistill.deploy.qdq_coverage import qdq_coverage
from yolodistill.compress.sparsity import magnitude_mask, onnx_2to4_report, prune_2to4, violations_2to4
from yolodistill.deploy.deployable import CLASSIFY, DETECT, Deployable
from yolodistill.runtime.tensorrt_engine import tensorrt_status

from .conftest import CLASSIFY_IMGSZ, IMGSZ, SHAPES, one_torch_thread

pytestmark = pytest.mark.float_sensitive  # exports through the parity check; onnxruntime against PyTorch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_BOXES = 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # yolov5 at 64 px: 3 anchors on 8x8, 4x4, 2x2 grids
TRT_OK = tensorrt_status()[0]  # where TensorRT builds engines, `--include engine` succeeds instead of failing


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


# ---- helpers -------------------------------------------------------------------------------------------------------

def run(*argv) -> int:
    return main([str(a) for a in argv])


def one_line_error(capsys, command: str, *argv) -> str:
    """Run `command argv`; expect exit 1 and a last stderr line 'yolodistill COMMAND: error: ...', no traceback."""
    capsys.readouterr()
    rc = run(command, *argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"yolodistill {command}: error: "), err
    return lines[0]


def copy_weights(src: Path, dst_dir: Path, name: str = "student.pt") -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dst_dir / name))


def metadata(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def opset(proto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def leftovers(folder: Path) -> list[str]:
    """Every .onnx and temp file under `folder` (hidden ones included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".onnx", ".tmp"))


def assert_faithful(got: np.ndarray, model: nn.Module, x: torch.Tensor, task: str = DETECT,
                    precision: str = "fp32") -> None:
    """onnxruntime's output `got` for `x` is within the export's parity rule of `model` (onnx_parity.py: every
    output group within 10x the model's own rounding error in `precision`, measured against float64): the same
    judgement on a fresh input that the export made on its own."""
    groups = noise_rule(model, task, x, got, precision)
    assert all(g.passed for g in groups), groups


def detector_model(weights: Path) -> nn.Module:
    """The plain, unfused FP32 PyTorch model, returning decoded boxes (B, N, 5 + nc) first."""
    return yb.load_model(weights).eval()


def save_yolov5n(path: Path) -> Path:
    """A fresh yolov5n in the checkpoint form yolov5 writes (FP16 model, training options)."""
    from yolodistill.checkpoint import save_checkpoint_atomic

    torch.manual_seed(0)
    model = yb.build_model("yolov5n.yaml", nc=2)
    model.names = {0: "rect", 1: "circle"}
    save_checkpoint_atomic({"model": model.half(), "opt": {"imgsz": IMGSZ}}, path)
    return path


# ---- 1. ONNX export and parity -------------------------------------------------------------------------------------

def test_detector_export_beside_weights_with_parity(teacher_weights, tmp_path):
    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ) == 0
    path = tmp_path / "student.onnx"
    assert leftovers(tmp_path) == ["student.onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert opset(proto) >= 17
    meta = metadata(proto)
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


def test_onnx_detector_wraps_the_file_for_val(teacher_weights, tmp_path):
    from yolodistill.runtime.onnx_file import OnnxDetector

    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ) == 0
    det = OnnxDetector(tmp_path / "student.onnx")
    assert det.names == {0: "rect", 1: "circle"} and det.stride.tolist() == [32.0]
    assert (det.fixed_batch, det.input_hw, det.fp16) == (1, (IMGSZ, IMGSZ), False)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(7))
    out = det(x)  # a static batch-1 file runs a batch of 2 image by image
    assert_faithful(out.numpy(), detector_model(weights), x)


def test_classifier_export_beside_weights_with_parity(shape_teachers, tmp_path):
    from yolodistill.classification.models import load_classifier

    weights = copy_weights(shape_teachers[0], tmp_path)
    assert run("export", "--weights", weights) == 0
    path = tmp_path / "student.onnx"
    assert leftovers(tmp_path) == ["student.onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert opset(proto) >= 17
    meta = metadata(proto)
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


# ---- 3. 2:4 sparsity -----------------------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """A 3-channel stem, a depthwise conv, two prunable convs and a prunable linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.pw = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.conv(self.dw(torch.relu(self.stem(x)))))))
        return self.fc(x.mean((2, 3)))


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def groups_of_4(w: torch.Tensor) -> list[torch.Tensor]:
    """Each group of 4 consecutive input weights, per output channel and kernel position, by explicit loops."""
    w = w if w.dim() == 4 else w[:, :, None, None]
    k, c, r, s = w.shape
    return [w[o, i:i + 4, a, b] for o in range(k) for a in range(r) for b in range(s) for i in range(0, c, 4)]


def test_magnitude_mask_keeps_the_two_largest_of_each_group():
    torch.manual_seed(1)
    for shape in ((6, 8, 3, 3), (5, 12, 1, 1), (4, 16)):
        w = torch.randn(shape)
        mask = magnitude_mask(w)
        assert mask.shape == w.shape and set(mask.unique().tolist()) == {0.0, 1.0}
        for group, m in zip(groups_of_4(w), groups_of_4(mask)):
            kept = set(group.abs().argsort(descending=True)[:2].tolist())
            assert set(m.nonzero().flatten().tolist()) == kept


def test_prune_2to4_masks_prunable_layers_and_leaves_stem_and_depthwise_dense():
    model = tiny_net()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_2to4(model)
    assert sorted(masks.layers) == ["conv", "fc", "pw"]
    for name in ("conv", "pw", "fc"):
        w = getattr(model, name).weight.detach()
        before = dense[f"{name}.weight"]
        for group, orig in zip(groups_of_4(w), groups_of_4(before)):
            assert int((group == 0).sum()) >= 2
            keep = orig.abs().argsort(descending=True)[:2]
            assert torch.equal(group[keep], orig[keep])  # the two largest |w| are kept as they were
        assert violations_2to4(w) == 0
    for name in ("stem.weight", "dw.weight", "stem.bias", "conv.bias", "fc.bias"):
        assert torch.equal(dict(model.named_parameters())[name], dense[name])
    assert masks.describe().startswith("2:4 sparsity on 3 layers")
    skipped = prune_2to4(tiny_net(), skip=["fc"])
    assert sorted(skipped.layers) == ["conv", "pw"]
    masks.remove()
    skipped.remove()


def test_masks_survive_sgd_momentum_steps():
    model = tiny_net()
    masks = prune_2to4(model)
    zeros = {n: getattr(model, n).weight.detach() == 0 for n in masks.layers}
    kept_before = {n: getattr(model, n).weight.detach().clone() for n in masks.layers}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=g)).pow(2).sum().backward()
        for n in masks.layers:  # the gradient hooks: no gradient reaches a pruned weight
            assert (getattr(model, n).weight.grad[zeros[n]] == 0).all()
        opt.step()
        masks.apply()
        for n in masks.layers:
            w = getattr(model, n).weight.detach()
            assert (w[zeros[n]] == 0).all() and violations_2to4(w) == 0
    for n in masks.layers:  # the kept weights did train
        assert not torch.equal(getattr(model, n).weight.detach()[~zeros[n]], kept_before[n][~zeros[n]])
    masks.remove()
    model(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    assert (model.conv.weight.grad[zeros["conv"]] != 0).any()  # hooks gone after remove()


def test_sparsity_masks_apply_zeroes_what_an_update_brought_back():
    model = tiny_net()
    masks = prune_2to4(model)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert violations_2to4(model.fc.weight) > 0
    masks.apply()
    assert violations_2to4(model.fc.weight) == 0
    masks.remove()


def test_violations_2to4_counts_a_broken_group():
    torch.manual_seed(3)
    w = torch.randn(4, 8, 3, 3)
    w.mul_(magnitude_mask(w))
    assert violations_2to4(w) == 0 and violations_2to4(w.numpy()) == 0
    broken = w.clone()
    group = broken[2, 4:8, 1, 0]
    group[group == 0] = 0.5  # one group of 4 with no zero left
    assert violations_2to4(broken) == 1 and violations_2to4(broken.numpy()) == 1
    one_zero = w.clone()
    one_zero[0, 0:4, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 3.0])  # one zero is not enough either
    assert violations_2to4(one_zero) == 1
    assert violations_2to4(torch.zeros(3, 8)) == 0
    with pytest.raises(ValueError):
        violations_2to4(torch.zeros(4, 3, 3, 3))  # the stem: no groups of 4


def test_sparsity_pattern_other_than_2to4_is_a_user_error():
    from yolodistill.compress import Compression
    from yolodistill.errors import UserError

    assert Compression(sparsity="2:4").sparsity == "2:4" and not Compression().enabled
    with pytest.raises(UserError, match="only 2:4"):
        Compression(sparsity="1:4")


@pytest.mark.slow
def test_sparse_classifier_distill_then_export(shapes_data, shape_teachers, tmp_path, capsys):
    from yolodistill.classification.models import read_checkpoint

    teacher = shape_teachers[0]
    assert run("classify", "distill", "--data", shapes_data, "--weights", teacher, "--teacher", teacher,
               "--model", "cnn", "--sparsity", "2:4", "--epochs", "1", "--imgsz", CLASSIFY_IMGSZ,
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", tmp_path, "--name", "s") == 0
    best = tmp_path / "s" / "weights" / "best.pt"
    ckpt = read_checkpoint(best)
    assert ckpt["sparsity"] == "2:4" and "quant" not in ckpt
    weights = {k: v for k, v in ckpt["model"].items() if k.endswith("weight") and v.dim() in (2, 4)}
    sparse = [k for k, v in weights.items() if v.shape[1] % 4 == 0]
    assert sparse and all(violations_2to4(weights[k]) == 0 for k in sparse)
    assert (weights["stages.0.0.weight"] != 0).all()  # the 3-channel stem stays dense

    assert run("export", "--weights", best) == 0
    report = onnx_2to4_report(str(best.with_suffix(".onnx")))
    assert report["violations"] == 0
    assert len(report["sparse_layers"]) == len(sparse) and report["checked"] == len(sparse)
    if not TRT_OK:  # the trtexec line for the target asks for 2:4 sparse kernels
        line = one_line_error(capsys, "export", "--weights", best, "--include", "engine")
        assert "trtexec --onnx=" in line and "--sparsity=enable" in line


def test_onnx_2to4_report_flags_a_dense_layer(tmp_path):
    """A hand-made ONNX file: a 2:4 conv, a broken-but-mostly-zero Gemm, and a dense conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    good = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    good *= magnitude_mask(torch.from_numpy(good)).numpy()
    gemm = np.zeros((8, 4), np.float32)  # Gemm without transB: stored (in, out)
    gemm[0:3, 0] = 1.0  # one group of 4 inputs with three non-zeros: a violation, yet 90% zeros overall
    dense = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "good"], ["y"], name="good"),
             helper.make_node("Conv", ["y", "dense"], ["z"], name="dense"),
             helper.make_node("GlobalAveragePool", ["z"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "gemm"], ["out"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 2, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                              initializer=[numpy_helper.from_array(a, n)
                                           for a, n in ((good, "good"), (dense, "dense"), (gemm, "gemm"))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = onnx_2to4_report(str(path))
    assert report == {"checked": 3, "sparse_layers": ["good", "gemm"], "violations": 1}


# ---- 4. quantization units -----------------------------------------------------------------------------------------

def fake_quant_by_hand(x: np.ndarray, amax) -> np.ndarray:
    """Symmetric INT8: scale amax / 127, round half to even (numpy's rounding), clamp to [-128, 127]."""
    scale = np.asarray(amax, np.float64) / 127.0
    return (np.clip(np.round(x / scale), -128, 127) * scale).astype(np.float32)


def test_fake_quantizer_per_tensor_matches_hand_computation():
    fq = q.FakeQuantizer()
    fq.amax.fill_(127.0)  # scale 1: halves are exact, so round-half-to-even shows
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4, -3.6, 126.6, 127.4, 200.0, -127.6, -128.4, -300.0])
    y = fq(x)
    assert y.tolist() == [0.0, 2.0, 2.0, 0.0, -2.0, -2.0, 3.0, -4.0, 127.0, 127.0, 127.0, -128.0, -128.0, -128.0]
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 5) * 3
    fq.amax.fill_(4.0)
    np.testing.assert_allclose(fq(x).numpy(), fake_quant_by_hand(x.numpy(), 4.0), rtol=0, atol=1e-6)
    assert fq(x).unique().numel() <= 256


def test_fake_quantizer_per_channel_matches_hand_computation():
    fq = q.FakeQuantizer(3, axis=0)
    amax = torch.tensor([127.0, 254.0, 63.5])  # scales 1, 2, 0.5
    fq.amax.copy_(amax)
    x = torch.tensor([[0.5, 1.5, 300.0, -300.0],
                      [1.0, 3.0, 5.2, -255.0],
                      [0.25, 0.75, -64.5, 63.6]])
    expected = [[0.0, 2.0, 127.0, -128.0],
                [0.0, 4.0, 6.0, -256.0],
                [0.0, 1.0, -64.0, 63.5]]
    assert fq(x).tolist() == expected
    torch.manual_seed(5)
    w = torch.randn(3, 4, 3, 3)
    np.testing.assert_allclose(fq(w).numpy(), fake_quant_by_hand(w.numpy(), amax.numpy().reshape(3, 1, 1, 1)),
                               rtol=0, atol=1e-6)
    dynamic = q.FakeQuantizer(3, axis=0, dynamic=True)  # a weight quantizer: its range follows the weight
    y = dynamic(w)
    observed = w.abs().amax(dim=(1, 2, 3))
    assert torch.equal(dynamic.amax, observed)
    np.testing.assert_allclose(y.numpy(), fake_quant_by_hand(w.numpy(), observed.numpy().reshape(3, 1, 1, 1)),
                               rtol=0, atol=1e-6)


def test_fake_quantizer_gradient_is_straight_through_inside_the_range():
    fq = q.FakeQuantizer()
    fq.amax.fill_(127.0)
    x = torch.tensor([-300.0, -129.0, -50.3, 0.2, 99.7, 126.9, 129.0, 300.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    per_channel = q.FakeQuantizer(2, axis=0)
    per_channel.amax.copy_(torch.tensor([127.0, 12.7]))  # channel 1 saturates at 12.7
    w = torch.tensor([[50.0, 200.0], [5.0, 20.0]], requires_grad=True)
    per_channel(w).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_calibrate_sets_input_ranges_to_the_max_seen():
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 3))
    names = q.quantize_model(model)
    assert names == ["0", "3"] and q.is_quantized(model)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(2, 4, 2, 2, generator=g) * s for s in (1.0, 5.0, 2.0)]  # the largest in the middle
    seen = []
    hook = model[3].register_forward_pre_hook(lambda m, args: seen.append(args[0].abs().max()))
    model.train()
    assert q.calibrate(model, batches, model) == 3
    hook.remove()
    assert model.training  # restored
    assert float(model[0].input_quantizer.amax) == max(float(b.abs().max()) for b in batches)
    assert float(model[3].input_quantizer.amax) == float(max(seen))
    assert not model[0].input_quantizer.calibrating and not model[3].input_quantizer.calibrating
    with pytest.raises(ValueError):
        q.calibrate(model, [], model)


def calibrated(model: nn.Module, seed: int = 7, shape=(2, 3, 8, 8)) -> torch.Tensor:
    """Quantize `model` in place, calibrate it on two random batches, return a third input."""
    q.quantize_model(model)
    g = torch.Generator().manual_seed(seed)
    q.calibrate(model, [torch.randn(*shape, generator=g) for _ in range(2)], model)
    return torch.randn(*shape, generator=g)


def test_strip_then_attach_quantizers_round_trips_outputs_exactly():
    model = tiny_net().eval()
    with torch.no_grad():
        plain_out = model(torch.zeros(1, 3, 8, 8))
    x = calibrated(model)
    with torch.no_grad():
        quant_out = model(x)
        assert not torch.equal(quant_out, tiny_net().eval()(x))  # the quantizers do change the output
    state = q.strip_quantizers(model)
    assert not q.is_quantized(model) and all(type(m) in (nn.Conv2d, nn.Linear) for m in
                                             (model.stem, model.dw, model.conv, model.pw, model.fc))
    assert not any("quantizer" in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(torch.zeros(1, 3, 8, 8)), plain_out)
    assert state["format"] == q.QUANT_FORMAT and set(state["layers"]) == {"stem", "dw", "conv", "pw", "fc"}
    q.attach_quantizers(model, state)
    with torch.no_grad():
        assert torch.equal(model(x), quant_out)
    fresh = tiny_net().eval()
    q.attach_quantizers(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(x), quant_out)
    with pytest.raises(ValueError, match="does not match"):
        q.attach_quantizers(nn.Sequential(nn.Conv2d(3, 3, 1)), state)
    with pytest.raises(ValueError):
        q.attach_quantizers(tiny_net(), {"layers": {}})


def test_split_state_dict_gives_a_plain_loadable_state_dict():
    from yolodistill.classification.models import build_classifier

    model = build_classifier("cnn_small", 3, imgsz=CLASSIFY_IMGSZ).eval()
    x = calibrated(model, shape=(2, 3, CLASSIFY_IMGSZ, CLASSIFY_IMGSZ))
    with torch.no_grad():
        quant_out = model(x)
    plain, state = q.split_state_dict(model.state_dict())
    assert not any("quantizer" in k for k in plain)
    fresh = build_classifier("cnn_small", 3, imgsz=CLASSIFY_IMGSZ).eval()
    fresh.load_state_dict(plain, strict=True)
    assert state["format"] == q.QUANT_FORMAT and set(state["layers"]) == {"stages.0.0", "stages.1.0", "head"}
    q.attach_quantizers(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(x), quant_out)
    assert q.split_state_dict(plain) == (plain, None)


# ---- 5. benchmark --------------------------------------------------------------------------------------------------

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


# ---- 6. bad input: one line on stderr, exit 1 ----------------------------------------------------------------------

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


def test_val_of_an_onnx_file_that_does_not_fit(teacher_weights, shape_teachers, tiny_data, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    assert run("export", "--weights", weights, "--imgsz", IMGSZ) == 0
    common = ["--data", tiny_data, "--workers", "0", "--device", "cpu", "--project", tmp_path, "--name", "v"]
    line = one_line_error(capsys, "val", "--weights", tmp_path / "student.onnx", "--imgsz", 2 * IMGSZ, *common)
    assert f"exported for {IMGSZ}x{IMGSZ} images: pass --imgsz {IMGSZ}" in line
    classifier = copy_weights(shape_teachers[1], tmp_path, "classifier.pt")
    assert run("export", "--weights", classifier) == 0
    line = one_line_error(capsys, "val", "--weights", tmp_path / "classifier.onnx", "--imgsz", IMGSZ, *common)
    assert "is not a detector" in line
    line = one_line_error(capsys, "val", "--weights", tmp_path / "nope.onnx", "--imgsz", IMGSZ, *common)
    assert "nope.onnx not found" in line


def test_imgsz_not_a_multiple_of_the_stride(teacher_weights, tmp_path, capsys):
    weights = copy_weights(teacher_weights, tmp_path)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", "50")
    assert "not a multiple" in line and "32" in line
    assert leftovers(tmp_path) == []

"""Running a model file (yolodistill/runtime/): the suffix table and its one entry, the fixed-batch and input-size
checks every exported format shares, the ONNX metadata reader, and an exported ONNX detector under val. TensorRT
engines run in tests/test_deploy_tensorrt.py (real ones) and tests/test_detect_sources.py (their glue)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from yolodistill.errors import UserError
from yolodistill.runtime import EXPORTED, RUNTIMES, load_detector, loader
from yolodistill.runtime.exported import ExportedDetector
from yolodistill.runtime.metadata import class_names, onnx_metadata, sibling_onnx_metadata

from .conftest import IMGSZ
from .deploy_helpers import (_one_thread, assert_faithful, copy_weights, detector_model,  # noqa: F401
                             one_line_error, run)


class Recorded(ExportedDetector):
    """An exported file that records the batch sizes it is run on; its boxes are each image's mean, as float16."""

    def __init__(self, dims):
        super().__init__()
        self.set_input_dims(dims)
        self.batches = []

    def run_batch(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        return images.mean((1, 2, 3)).view(-1, 1, 1).expand(-1, 2, 7).half()


def save_onnx(path: Path, metadata: dict) -> Path:
    """An Identity graph whose metadata_props are `metadata` (text values, as an export writes them)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return path


# ---- the suffix table ----------------------------------------------------------------------------------------------

def test_every_suffix_names_an_exported_detector():
    from importlib import import_module

    assert EXPORTED == tuple(RUNTIMES) and {".onnx", ".engine"} <= set(RUNTIMES)
    for suffix, where in RUNTIMES.items():
        module, _, name = where.rpartition(".")
        assert issubclass(getattr(import_module(f"yolodistill.runtime.{module}"), name), ExportedDetector), suffix


def test_a_new_format_is_one_module_and_one_suffix_entry(tmp_path, monkeypatch):
    class FakeDetector(ExportedDetector):
        def __init__(self, path, *, data=None):
            super().__init__()
            self.path, self.data = path, data

    module = types.ModuleType("yolodistill.runtime.fake_format")
    module.FakeDetector = FakeDetector
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(loader.RUNTIMES, ".fake", "fake_format.FakeDetector")
    path = tmp_path / "m.FAKE"  # suffixes match whatever their case
    with pytest.raises(UserError, match="m.FAKE not found"):
        load_detector(path)
    path.write_bytes(b"")
    detector = load_detector(path, data="data.yaml")
    assert type(detector) is FakeDetector and (detector.path, detector.data) == (path, "data.yaml")


# ---- what every exported format shares -----------------------------------------------------------------------------

def test_a_fixed_batch_of_one_runs_image_by_image_and_a_dynamic_one_at_once():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fixed = Recorded((1, 3, 8, 8))
    assert (fixed.fixed_batch, fixed.input_hw) == (1, (8, 8))
    out = fixed(x)
    assert fixed.batches == [1, 1, 1] and out.dtype == torch.float32 and out.shape == (3, 2, 7)
    torch.testing.assert_close(out[:, 0, 0], x.mean((1, 2, 3)), atol=1e-3, rtol=0)
    dynamic = Recorded((None, 3, None, None))
    assert (dynamic.fixed_batch, dynamic.input_hw) == (None, None)
    dynamic(x)
    exact = Recorded((3, 3, 8, 8))
    exact(x)
    assert dynamic.batches == exact.batches == [3]


def test_an_exported_file_refuses_another_size_or_batch():
    with pytest.raises(UserError, match="the exported file takes 8x8 images, got 16x16: run it at its size"):
        Recorded((1, 3, 8, 8))(torch.zeros(1, 3, 16, 16))
    with pytest.raises(UserError, match="has a fixed batch of 2; export with --dynamic"):
        Recorded((2, 3, 8, 8))(torch.zeros(3, 3, 8, 8))


# ---- metadata ------------------------------------------------------------------------------------------------------

def test_onnx_metadata_parses_literals_and_keeps_text(tmp_path):
    path = save_onnx(tmp_path / "m.onnx", {"names": "{0: 'rect', 1: 'circle'}", "stride": "32", "task": "detect",
                                           "imgsz": "[64, 64]", "precision": "int8"})
    assert onnx_metadata(path) == {"names": {0: "rect", 1: "circle"}, "stride": 32, "task": "detect",
                                   "imgsz": [64, 64], "precision": "int8"}


def test_a_file_without_metadata_reads_the_onnx_file_beside_it(tmp_path, caplog):
    engine = tmp_path / "m.engine"
    assert sibling_onnx_metadata(engine) == {}
    save_onnx(tmp_path / "m.onnx", {"stride": "16", "names": "['a', 'b']"})
    meta = sibling_onnx_metadata(engine)
    assert meta == {"stride": 16, "names": ["a", "b"]} and class_names(engine, meta, None, 2) == ["a", "b"]
    with pytest.raises(UserError, match="predicts 3 classes but .*m.onnx names 2"):
        class_names(engine, meta, None, 3)
    (tmp_path / "m.onnx").write_bytes(b"\xff\x00 not a protobuf \x12\x99")
    assert sibling_onnx_metadata(engine) == {} and "cannot read" in caplog.text


# ---- an exported ONNX detector -------------------------------------------------------------------------------------

@pytest.mark.float_sensitive  # exports through the parity check; onnxruntime against PyTorch
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


@pytest.mark.float_sensitive  # exports through the parity check
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

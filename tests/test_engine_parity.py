"""A built engine is compared with its ONNX file before it is put in place (deploy/engine_parity.py).

TensorRT is not needed: the rule and the box matching are tested on numpy runners with known differences, and the
placement in `yolodistill export --include engine` with TensorRT's build and runner replaced by fakes that run the
ONNX file through onnxruntime. That tests the glue (temp name, comparison, refusal, placement), not TensorRT; the
real engines are tests/test_deploy_tensorrt.py's, where TensorRT exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolodistill.deploy import compare
from yolodistill.deploy import engine_parity as ep
from yolodistill.deploy import tensorrt as trt_module
from yolodistill.errors import UserError
from yolodistill.runtime import tensorrt_engine

from .conftest import IMGSZ
from .deploy_helpers import one_line_error, save_yolov5n

pytestmark = pytest.mark.float_sensitive  # exports through the ONNX parity check before the (fake) engine


def test_identical_runners_pass_with_zero_difference():
    x = [np.full((1, 3, 4, 4), 0.5, np.float32)]
    same = lambda a: a * 2 + 1  # noqa: E731
    report = ep.compare(same, same, x, precision="fp32")
    assert report.passed and report.max_abs_diff == 0 and report.mean_rel_diff == 0 and report.images == 1


@pytest.mark.parametrize("precision", sorted(ep.MEAN_LIMITS))
def test_the_rule_is_the_mean_difference_over_the_mean_output(precision):
    # reference output 2 everywhere; the engine adds d to every element: mean |diff| / mean |ref| = d / 2 exactly
    # (d and 2 + d are exact in float32 for these binary fractions)
    limit = ep.MEAN_LIMITS[precision]
    ref = lambda a: np.full_like(a, 2.0)  # noqa: E731
    x = [np.zeros((1, 3, 2, 2), np.float32)]
    inside, outside = 2 * limit / 2, 2 * limit * 2  # half and twice the limit
    assert ep.compare(lambda a: ref(a) + inside, ref, x, precision=precision).passed
    failed = ep.compare(lambda a: ref(a) + outside, ref, x, precision=precision)
    assert not failed.passed and failed.mean_rel_diff == pytest.approx(2 * limit, rel=1e-6)


def test_non_finite_engine_output_fails():
    x = [np.zeros((1, 3, 2, 2), np.float32)]
    report = ep.compare(lambda a: np.full_like(a, np.nan), lambda a: np.ones_like(a), x, precision="fp32")
    assert not report.passed


def test_shape_mismatch_is_an_error():
    with pytest.raises(ep.EngineParityError, match="shape"):
        ep.compare(lambda a: a[:, :1], lambda a: a, [np.zeros((1, 3, 2, 2), np.float32)], precision="fp32")


def test_boxes_match_by_class_and_iou_each_used_once():
    want = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [0, 0, 10, 10, 0.7, 1]], np.float32)
    # the first box shifted by 1 px (IoU 81/119 = 0.68), the second's class changed, the third exact
    have = np.array([[1, 1, 11, 11, 0.9, 0], [20, 20, 30, 30, 0.8, 0], [0, 0, 10, 10, 0.6, 1]], np.float32)
    assert compare.matched_boxes(want, have) == 2
    assert compare.matched_boxes(want, have[:0]) == 0
    # two wanted boxes on one engine box: only one can claim it
    assert compare.matched_boxes(want[[0, 0]], have[:1]) == 1


def test_sample_images_are_real_photos_at_the_input_size():
    images, where = compare.sample_images((32, 48))
    assert where == "yolov5's sample images" and len(images) == 2
    for im in images:
        assert im.shape == (1, 3, 32, 48) and im.dtype == np.float32
        assert 0 <= im.min() and im.max() <= 1 and im.std() > 0.05  # a photo, not a flat image


def test_unreadable_images_are_a_user_error(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="could be read"):
        compare.sample_images((32, 32), files=[bad])


# ---- placement in `yolodistill export --include engine`, TensorRT replaced by onnxruntime fakes ----------------------

@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT "available"; build copies the ONNX file as the engine; the runner runs it through onnxruntime and
    adds `state["offset"]` to its output."""
    from yolodistill.runtime.onnx_file import ort_session

    state = {"offset": 0.0, "built": []}

    def build_engine(onnx_path, engine_path, **kw):
        state["built"].append(engine_path)
        engine_path.write_bytes(onnx_path.read_bytes())
        return engine_path

    class Runner:
        def __init__(self, engine_path):
            self.session = ort_session(engine_path)

        def __call__(self, x):
            out = self.session.run(None, {self.session.get_inputs()[0].name: np.asarray(x, np.float32)})
            return [o + state["offset"] for o in out]

    monkeypatch.setattr(tensorrt_engine, "tensorrt_status", lambda: (True, "fake TensorRT"))
    monkeypatch.setattr(trt_module, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt_engine, "TensorRTRunner", Runner)
    return state


def test_an_engine_that_agrees_is_put_in_place(tmp_path, fake_tensorrt, caplog):
    weights = save_yolov5n(tmp_path / "student.pt")
    from yolodistill.deploy.export import export

    with torch.no_grad(), caplog.at_level("INFO", logger="yolodistill"):
        result = export(weights, include=("onnx", "engine"), imgsz=[IMGSZ])
    engine = tmp_path / "student.engine"
    assert result["engine"] == str(engine) and engine.is_file()
    assert fake_tensorrt["built"][0].name.startswith(".student.engine.")  # built under a hidden name first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.engine", "student.onnx", "student.pt"]
    assert any("engine vs ONNX on 2 images (fp32): max |diff| 0" in r.getMessage() for r in caplog.records)


def test_an_engine_that_disagrees_is_refused_and_not_written(tmp_path, fake_tensorrt, capsys):
    weights = save_yolov5n(tmp_path / "student.pt")
    fake_tensorrt["offset"] = 1e3  # far beyond 1% of the outputs' mean magnitude (boxes in pixels at 64 px, scores)
    line = one_line_error(capsys, "export", "--weights", weights, "--imgsz", IMGSZ, "--include", "engine")
    assert "the engine differs from student.onnx beyond the rule" in line and "fp32" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "student.pt"]  # no engine, no temp


def test_with_a_dataset_the_engine_is_compared_on_its_val_images(tiny_data):
    from yolodistill.deploy.export import _val_images

    files = _val_images(tiny_data)
    assert len(files) == 4 and all(f.is_file() and f.parent.name == "val" for f in files)
    images, where = compare.sample_images((32, 32), files=files)
    assert where == "the given images" and len(images) == 4

"""The ONNX parity rule (deploy/onnx_parity.py): onnxruntime is judged against PyTorch's own rounding error, so a
sound file passes on any CPU's kernels and a broken one (a dropped layer, a wrong op, a wrong input layout) fails.

CI runs this file a second time under PyTorch's scalar kernels and oneDNN held to SSE4.1 (.ci/run), so a limit that
holds only for one CPU's kernels cannot land."""

from __future__ import annotations

import importlib.util
from copy import deepcopy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolodistill.deploy import onnx_parity as op
from yolodistill.deploy.deployable import CLASSIFY, DETECT, Deployable, load_deployable

from .conftest import IMGSZ, yolov5n_with_data_statistics
from .deploy_helpers import _one_thread, one_line_error, run  # noqa: F401 -- torch on one thread here too

pytestmark = pytest.mark.float_sensitive
U32 = 2.0 ** -24


def parity_noise_module():
    """benchmarks/parity_noise.py, whose `broken(proto, how)` makes the defective files."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "parity_noise.py"
    spec = importlib.util.spec_from_file_location("parity_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedSession:
    """An onnxruntime stand-in that returns a given output (for rules on hand-made differences)."""

    def __init__(self, output: np.ndarray, input_type: str = "tensor(float)"):
        self.output, self.input_type = output, input_type

    def get_inputs(self):
        return [type("Input", (), {"name": "images", "type": self.input_type})()]

    def run(self, names, feed):
        return [self.output]


def tiny_classifier() -> Deployable:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    return Deployable(model=model, task=CLASSIFY, imgsz=(16, 16), source=Path("tiny.pt"), output_names=["logits"],
                      metadata={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})


# ---- the rule on hand-made differences -------------------------------------------------------------------------------

def test_output_groups_share_a_unit():
    assert [g.name for g in op.output_groups(DETECT, 7)] == ["xy (px)", "wh (px)", "objectness", "class"]
    assert [g.name for g in op.output_groups(DETECT, 5)] == ["xy (px)", "wh (px)", "objectness"]  # nc = 0
    assert [(g.columns, g.probability) for g in op.output_groups(DETECT, 7)][2:] == [(slice(4, 5), True),
                                                                                    (slice(5, None), True)]
    assert [g.name for g in op.output_groups(CLASSIFY, 10)] == ["logits"]


def test_limit_is_ten_times_the_models_own_rounding_plus_a_floor():
    dep = tiny_classifier()
    x, _ = op.parity_images(dep, 2)
    with torch.no_grad():
        exact = dep.model.double()(x.double()).numpy()
        own = dep.model.float()(x).double().numpy()
    # the limits by hand, from the documented formula
    noise, mean_noise = np.abs(own - exact).max(), np.abs(own - exact).mean()
    floor = op.FLOOR_ULPS * U32 * np.abs(exact).mean()
    limit, mean_limit = op.NOISE_FACTOR * noise + floor, op.NOISE_FACTOR * mean_noise + floor
    assert noise > 0  # the model does round in float32: the test is about the factor, not the floor

    def judge(got: np.ndarray) -> op.GroupParity:
        (group,) = op.check_parity(dep, FixedSession(got), "fp32", batch=2).groups  # float64: no rounding
        return group

    group = judge(exact)
    assert group.passed and group.limit == pytest.approx(limit) and group.mean_limit == pytest.approx(mean_limit)
    one = np.zeros_like(exact)
    one.flat[3] = 1
    assert judge(exact + 0.9 * limit * one).passed
    assert not judge(exact + 1.1 * limit * one).passed  # one element past the max limit
    everywhere = np.full_like(exact, 1.1 * mean_limit)
    assert 1.1 * mean_limit < limit  # inside the max limit, outside the mean limit: only the mean can fail it
    assert not judge(exact + everywhere).passed


def test_non_finite_output_fails():
    dep = tiny_classifier()
    report = op.check_parity(dep, FixedSession(np.full((1, 4), np.nan, np.float32)), "fp32", batch=1)
    assert not report.passed and "differs from PyTorch by up to inf" in report.failure()


def test_user_tolerance_judges_element_wise():
    dep = tiny_classifier()
    x, _ = op.parity_images(dep, 1)
    with torch.no_grad():
        ref = dep.model(x).numpy()
    off = FixedSession(ref + 0.5)
    assert not op.check_parity(dep, off, "fp32", batch=1).passed
    report = op.check_parity(dep, off, "fp32", batch=1, tolerance=(0.6, 0))
    assert report.rule == "elementwise" and report.passed and report.outside == 0
    report = op.check_parity(dep, off, "fp32", batch=1, tolerance=(0.4, 0))
    assert not report.passed and report.outside == 4 and "4/4 outside atol 0.4" in report.failure()


def test_parity_runs_on_real_photos_cycled_to_the_batch():
    dep = tiny_classifier()
    x, where = op.parity_images(dep, 3)
    assert x.shape == (3, 3, 16, 16) and where == "yolov5's sample images"
    assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])  # bus, zidane, bus
    assert float((x[0] * 0.25 + 0.5).min()) >= 0  # normalised by the classifier's mean and std


# ---- a real detector: sound passes, broken fails -----------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(tiny_data, tmp_path_factory) -> tuple[Deployable, Path]:
    """A yolov5n with its data's BatchNorm statistics, as a Deployable, and its sound FP32 ONNX file."""
    from yolodistill.checkpoint import save_checkpoint_atomic
    from yolodistill.deploy.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("parity")
    weights = folder / "student.pt"
    save_checkpoint_atomic({"model": yolov5n_with_data_statistics(tiny_data).half(), "opt": {"imgsz": IMGSZ}},
                           weights)
    dep = load_deployable(weights)
    report = export_onnx(dep, folder / "student.onnx", batch=2)
    assert report.parity.rule == "noise" and report.parity.passed
    return dep, report.path


def test_sound_detector_file_passes_with_its_figures(calibrated):
    from yolodistill.runtime.onnx_file import ort_session

    dep, path = calibrated
    report = op.check_parity(dep, ort_session(path), "fp32", batch=2)
    assert report.passed and [g.name for g in report.groups] == ["xy (px)", "wh (px)", "objectness", "class"]
    for g in report.groups:
        assert 0 < g.noise and g.error <= g.limit
    summary = report.summary()
    assert "on 2 images (yolov5's sample images)" in summary and "(limit 10x)" in summary
    assert report.boxes is not None and "boxes after NMS" in summary


def test_probabilities_have_an_absolute_floor(calibrated):
    # onnxruntime's sigmoid errs by ~1e-7 absolute (7.7e-8 measured) where PyTorch's is nearly exact, so an
    # objectness of 0.01 gets a floor of FLOOR_ULPS ulps of 1 (the probabilities' range), not of its own size
    dep, _ = calibrated
    x, _ = op.parity_images(dep, 2)
    with torch.no_grad():
        exact = deepcopy(dep.model).double()(x.double())[0].numpy()
    floor = op.FLOOR_ULPS * U32
    probabilities = np.zeros_like(exact)
    probabilities[..., 4:] = 1
    within = op.check_parity(dep, FixedSession((exact + 0.5 * floor * probabilities).astype(np.float32)), "fp32",
                             batch=2)
    assert within.passed
    # ... while boxes in pixels keep a floor relative to their size: a 1 px shift of every box fails
    boxes = np.zeros_like(exact)
    boxes[..., :2] = 1
    shifted = op.check_parity(dep, FixedSession((exact + boxes).astype(np.float32)), "fp32", batch=2)
    assert not shifted.passed and "its xy (px) output" in shifted.failure()


@pytest.mark.parametrize("how", ["drop_silu", "resize_linear", "channels_bgr", "transpose_hw"])
def test_broken_detector_file_fails(calibrated, tmp_path, how):
    from yolodistill.runtime.onnx_file import ort_session

    dep, path = calibrated
    bad = parity_noise_module().broken(onnx.load(str(path)), how)
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    report = op.check_parity(dep, ort_session(tmp_path / "bad.onnx"), "fp32", batch=2)
    assert not report.passed
    # benchmarks/parity_noise.py measured these defects at >= 2.3e4 x the noise on this kind of model: far past 10x
    assert max(g.ratio for g in report.groups) > 100 * op.NOISE_FACTOR
    assert "is off exact (float64) arithmetic" in report.failure()


def test_sound_half_file_passes(calibrated, tmp_path):
    from yolodistill.deploy.onnx_export import export_onnx

    dep, _ = calibrated
    report = export_onnx(dep, tmp_path / "half.onnx", half=True)
    assert report.precision == "fp16" and report.parity.passed
    # float16 noise is measured on PyTorch's own float16 forward, ~2^13 times float32's
    assert all(g.noise > 0 for g in report.parity.groups)


def test_export_checks_parity_on_the_datasets_val_images(calibrated, tiny_data, tmp_path, caplog):
    from yolodistill.deploy.export import export

    dep, path = calibrated
    weights = Path(str(path).replace(".onnx", ".pt"))
    with caplog.at_level("INFO", logger="yolodistill"):
        export(weights, imgsz=[IMGSZ], data=tiny_data, output=tmp_path / "v.onnx")
    assert any("on 1 image (the given images)" in r.getMessage() for r in caplog.records)

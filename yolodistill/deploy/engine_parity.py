"""A built TensorRT engine against the ONNX file it was built from, on real images, before the engine is put in place.

TensorRT may pick TF32 kernels for an FP32 network, halves an FP16 one and runs a Q/DQ network in INT8 kernels, so
the two cannot agree element for element; the rule is on the mean, as for INT8 ONNX parity (onnx_export.py):
mean |engine - onnx| <= limit * mean |onnx| over every raw output element. The limits:
- fp32: 1%. TF32 keeps 10 mantissa bits (relative rounding 2^-11 = 4.9e-4 per op); a few tens of layers in
  sequence stay well inside 1% on the mean, while a wrong input layout or a dropped layer is off by 10-100%.
- fp16: 2%, the same 10 mantissa bits for the activations as well as the weights.
- int8: 5%, the ONNX INT8 rule: onnxruntime emulates the Q/DQ pairs in float, and an activation within float error
  of a rounding boundary rounds the other way in one runtime, a whole quantization step.
For detectors the boxes after NMS are compared as well and printed (matched share at IoU 0.5, same class): a
figure for the reader, not part of the rule, because boxes near the confidence threshold come and go with any
noise and a few images hold few boxes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import UserError
from .compare import detector_nms, matched_boxes, normalise, sample_images

LOGGER = logging.getLogger("yolodistill")
MEAN_LIMITS = {"fp32": 0.01, "fp16": 0.02, "int8": 0.05}
Runner = Callable[[np.ndarray], np.ndarray]  # (1, 3, H, W) float32 -> the first raw output


class EngineParityError(UserError):
    """The engine's outputs differ from the ONNX file's beyond the rule; the engine is not put in place."""


@dataclass
class EngineParity:
    images: int
    max_abs_diff: float
    mean_rel_diff: float  # mean |engine - onnx| / mean |onnx|
    limit: float
    precision: str
    boxes_onnx: Optional[int] = None  # detectors: boxes after NMS in the ONNX file's outputs
    boxes_matched: Optional[int] = None  # of those, found by the engine (same class, IoU >= 0.5)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.mean_rel_diff)) and self.mean_rel_diff <= self.limit

    def summary(self) -> str:
        boxes = ""
        if self.boxes_onnx is not None:
            boxes = f"; boxes after NMS: {self.boxes_matched}/{self.boxes_onnx} of the ONNX file's found by the engine"
        return (f"engine vs ONNX on {self.images} images ({self.precision}): max |diff| {self.max_abs_diff:.3g}, "
                f"mean |diff| {self.mean_rel_diff:.2%} of mean |output| (limit {self.limit:.0%}){boxes}")


def compare(engine: Runner, onnx: Runner, inputs: Sequence[np.ndarray], *, precision: str,
            nms: Optional[Callable[[np.ndarray], list[np.ndarray]]] = None) -> EngineParity:
    """Run both on every input; `nms` (raw output -> per-image (n, 6) xyxy, conf, class) adds the box figures."""
    diffs, refs, matched, total = [], [], 0, 0
    for x in inputs:
        ref, got = np.asarray(onnx(x), np.float32), np.asarray(engine(x), np.float32)
        if ref.shape != got.shape:
            raise EngineParityError(f"the engine's output shape {got.shape} differs from the ONNX file's {ref.shape}")
        diffs.append(np.abs(got - ref).ravel())
        refs.append(np.abs(ref).ravel())
        if nms is not None:
            for want, have in zip(nms(ref), nms(got)):
                total += len(want)
                matched += matched_boxes(want, have)
    diff, ref = np.concatenate(diffs), np.concatenate(refs)
    finite = bool(np.isfinite(diff).all())
    mean_rel = float(diff.mean() / max(float(ref.mean()), 1e-12)) if finite else float("inf")
    return EngineParity(images=len(inputs), max_abs_diff=float(np.nanmax(diff)) if finite else float("inf"),
                        mean_rel_diff=mean_rel, limit=MEAN_LIMITS[precision], precision=precision,
                        boxes_onnx=total if nms else None, boxes_matched=matched if nms else None)


def check_built_engine(onnx_path: Path, engine_path: Path, *, task: str, precision: str, hw: tuple[int, int],
                       metadata: dict, files: Sequence[Path] = ()) -> EngineParity:
    """Compare a freshly built engine with its ONNX file on real images; raises EngineParityError if it fails."""
    from ..runtime.onnx_file import ort_session
    from ..runtime.tensorrt_engine import TensorRTRunner

    images, where = sample_images(hw, files=files)
    if task == "classify":
        images = normalise(images, metadata["mean"], metadata["std"])
    session = ort_session(onnx_path)
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1  # a fixed-batch file takes exactly its batch
    dtype = np.float16 if "float16" in inp.type else np.float32
    trt_runner = TensorRTRunner(engine_path)

    def onnx_run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {inp.name: np.repeat(x, batch, 0).astype(dtype)})[0][:1]

    def engine_run(x: np.ndarray) -> np.ndarray:
        return trt_runner(np.repeat(x, batch, 0).astype(dtype))[0][:1]

    report = compare(engine_run, onnx_run, images, precision=precision, nms=detector_nms if task == "detect" else None)
    LOGGER.info(f"{report.summary()} ({where})")
    if not report.passed:
        raise EngineParityError(f"the engine differs from {onnx_path.name} beyond the rule: mean |diff| "
                                f"{report.mean_rel_diff:.2%} of mean |output| > {report.limit:.0%} ({precision}); "
                                f"it was not written to {engine_path.name.lstrip('.')}")
    return report

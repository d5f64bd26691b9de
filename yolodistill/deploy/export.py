"""`yolodistill export`: a student checkpoint (detection or classification, plain, QAT or 2:4 sparse) to ONNX,
then optionally to a TensorRT engine. Files land beside the weights, named like yolov5's export.py names them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence, Union

from ..errors import UserError
from .deployable import DETECT, INPUT_NAME, load_deployable
from .engine_parity import check_built_engine
from .onnx_export import export_onnx
from .options import ExportOptions

LOGGER = logging.getLogger("yolodistill")
FORMATS = ("onnx", "engine")


def export(weights: Union[str, Path], **options) -> dict:
    """Export; `options`: ExportOptions' fields (the `yolodistill export` flags). Returns {"onnx": path, "engine":
    path (if asked), "parity": max |diff|, "task": ...}.

    `int8` with `data` (a dataset yaml) on a student without QAT ranges: post-training INT8, its fake quantizers
    calibrated on `calib_images` training images (deploy/ptq.py), exported as Q/DQ nodes."""
    options = ExportOptions(weights=str(weights), **options)
    unknown = [f for f in options.include if f not in FORMATS]
    if unknown:
        raise UserError(f"--include {' '.join(unknown)}: choose from {', '.join(FORMATS)}")
    if options.tolerance is not None and len(options.tolerance) != 2:
        raise UserError("--tolerance takes two numbers: ATOL RTOL")
    weights = Path(weights)
    dep = load_deployable(weights, imgsz=options.imgsz, dynamic=options.dynamic, trust=options.trust_checkpoint)
    LOGGER.info(f"Exporting {dep.describe()}")
    # One INT8 path for TensorRT 10 and 11 alike: Q/DQ nodes, from QAT or from calibration here (11 has no
    # calibrators, 10 deprecates them)
    _int8_ranges(dep, weights, int8=options.int8, data=options.data, images=options.calib_images,
                 workers=options.workers)
    onnx_path = Path(options.output) if options.output else weights.with_suffix(".onnx")
    # a dataset's val images are the realest input to compare runtimes on (a detector's --data is a yolov5 yaml)
    val_images = _val_images(options.data) if options.data is not None and dep.task == DETECT else ()
    report = export_onnx(dep, onnx_path, batch=options.batch_size, dynamic=options.dynamic, half=options.half,
                         simplify=options.simplify, opset=options.opset,
                         tolerance=tuple(options.tolerance) if options.tolerance else None, parity_files=val_images)
    result = {"task": dep.task, "onnx": str(report.path), "parity_max_abs_diff": report.max_abs_diff,
              "precision": report.precision, "qdq_nodes": report.qdq_nodes,
              "qdq_coverage": report.coverage.summary() if report.coverage else None}
    if "engine" in options.include:
        result["engine"] = str(_engine(report.path, dep, options, half=options.half and not dep.quantized,
                                       int8=options.int8 or dep.quantized, parity_images=val_images))
    return result


def _val_images(data: Union[str, Path], count: int = 4) -> list[Path]:
    """The first `count` val images of a dataset yaml: real images of the task to compare an engine with its ONNX."""
    from .. import yolo_backend as yb

    split = yb.load_data_yaml(data).get("val")
    return [Path(f) for f in yb.listed_images(split)[:count]] if split else []


def _int8_ranges(dep, weights: Path, *, int8: bool, data, images: int, workers: int) -> None:
    """The student's own INT8 ranges (QAT), or ranges calibrated on `data` (PTQ); refusals with what to do."""
    current = dep.quantized and not dep.legacy_int8
    if current or not (int8 or dep.legacy_int8):
        if data is not None:
            why = (f"{weights.name} carries the INT8 ranges of its quantization-aware training" if current
                   else "it calibrates post-training INT8, which only --int8 asks for")
            LOGGER.warning(f"WARNING: --data calibrates nothing here, its val images only check parity: {why}")
        return
    if dep.task != DETECT:
        raise UserError(f"--int8 needs a quantization-aware trained classifier ({weights} has no INT8 ranges; "
                        f"calibration with --data is for detectors): fine-tune it with --qat first")
    if data is None and dep.legacy_int8:
        raise UserError(f"{weights} holds INT8 ranges of an earlier scheme (conv inputs only: TensorRT would run its "
                        f"residual adds and concatenations in float): add --data data.yaml to calibrate the current "
                        f"scheme's ranges on training images (its weights are kept), or fine-tune it again with --qat")
    if data is None:
        raise UserError(f"--int8 needs INT8 ranges and {weights} has none: add --data data.yaml to calibrate them on "
                        f"its training images (post-training), or fine-tune it with "
                        f"`yolodistill train --weights {weights} --qat ...` first")
    if images < 1:
        raise UserError(f"--calib-images must be at least 1, got {images}")
    from .ptq import calibrate_deployable

    calibrate_deployable(dep, data, images=images, workers=workers)


def _engine(onnx_path: Path, dep, options: ExportOptions, *, half: bool, int8: bool,
            parity_images: Sequence[Path] = ()) -> Path:
    from ..runtime.tensorrt_engine import TensorRTUnavailable, tensorrt_status
    from . import tensorrt as trt

    engine_path = onnx_path.with_suffix(".engine")
    batch, max_batch, dynamic, workspace = options.batch_size, options.max_batch, options.dynamic, options.workspace
    ok, reason = tensorrt_status()
    if not ok:
        shape = (batch, 3, *dep.imgsz)
        kw = dict(min_shape=(1, 3, *dep.imgsz), max_shape=((max_batch or batch), 3, *dep.imgsz)) if dynamic else {}
        line = trt.trtexec_command(onnx_path, engine_path, half=half, int8=int8, input_name=INPUT_NAME, shape=shape,
                                   workspace_gb=workspace, sparse=dep.sparsity is not None, **kw)
        raise TensorRTUnavailable(f"cannot build a TensorRT engine here ({reason}); {onnx_path} is written: "
                                  f"build the engine on the target (a Jetson) with: {line}")
    # built beside its place under a hidden name, put in place only once it agrees with the ONNX file
    tmp = engine_path.with_name(f".{engine_path.name}.{os.getpid()}.tmp")
    try:
        trt.build_engine(onnx_path, tmp, half=half, int8=int8, dynamic=dynamic, batch=batch,
                         max_batch=max_batch, workspace_gb=workspace, sparse=dep.sparsity is not None)
        precision = "int8" if int8 else "fp16" if half else "fp32"
        check_built_engine(onnx_path, tmp, task=dep.task, precision=precision, hw=dep.imgsz, metadata=dep.metadata,
                           files=parity_images)
        os.replace(tmp, engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    LOGGER.info(f"TensorRT engine ({precision}): {engine_path}")
    return engine_path

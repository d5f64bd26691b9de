"""`yolodistill export`: a student checkpoint (detection or classification, plain, QAT or 2:4 sparse) to ONNX,
then optionally to a TensorRT engine. Files land beside the weights, named like yolov5's export.py names them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import UserError
from .engine_parity import check_built_engine
from .onnx_export import MIN_OPSET, export_onnx
from .student import INPUT_NAME, load_deployable

LOGGER = logging.getLogger("yolodistill")
FORMATS = ("onnx", "engine")


def export(weights: Union[str, Path], *, include: Sequence[str] = ("onnx",), imgsz: Optional[Sequence[int]] = None,
           batch: int = 1, dynamic: bool = False, half: bool = False, int8: bool = False, simplify: bool = False,
           opset: int = MIN_OPSET, output: Optional[str] = None, tolerance: Optional[Sequence[float]] = None,
           workspace: float = 4.0, max_batch: Optional[int] = None, trust: bool = False) -> dict:
    """Export; returns {"onnx": path, "engine": path (if asked), "parity": max |diff|, "task": ...}."""
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise UserError(f"--include {' '.join(unknown)}: choose from {', '.join(FORMATS)}")
    if tolerance is not None and len(tolerance) != 2:
        raise UserError("--tolerance takes two numbers: ATOL RTOL")
    weights = Path(weights)
    dep = load_deployable(weights, imgsz=imgsz, dynamic=dynamic, trust=trust)
    LOGGER.info(f"Exporting {dep.describe()}")
    if int8 and not dep.quantized:
        # One INT8 path for TensorRT 10 and 11 alike: the Q/DQ nodes of a QAT student (11 has no calibrators).
        raise UserError(f"--int8 needs a quantization-aware trained student ({weights} has no INT8 ranges): "
                        f"fine-tune it with `yolodistill train --weights {weights} --qat ...` first")
    onnx_path = Path(output) if output else weights.with_suffix(".onnx")
    report = export_onnx(dep, onnx_path, batch=batch, dynamic=dynamic, half=half, simplify=simplify, opset=opset,
                         tolerance=tuple(tolerance) if tolerance else None)
    result = {"task": dep.task, "onnx": str(report.path), "parity_max_abs_diff": report.max_abs_diff,
              "precision": report.precision, "qdq_nodes": report.qdq_nodes}
    if "engine" in include:
        result["engine"] = str(_engine(report.path, dep, batch=batch, dynamic=dynamic, half=half,
                                       int8=int8 or dep.quantized, workspace=workspace, max_batch=max_batch))
    return result


def _engine(onnx_path: Path, dep, *, batch: int, dynamic: bool, half: bool, int8: bool, workspace: float,
            max_batch: Optional[int], parity_images: Sequence[Path] = ()) -> Path:
    from . import tensorrt as trt

    engine_path = onnx_path.with_suffix(".engine")
    ok, reason = trt.tensorrt_status()
    if not ok:
        shape = (batch, 3, *dep.imgsz)
        kw = dict(min_shape=(1, 3, *dep.imgsz), max_shape=((max_batch or batch), 3, *dep.imgsz)) if dynamic else {}
        line = trt.trtexec_command(onnx_path, engine_path, half=half, int8=int8, input_name=INPUT_NAME, shape=shape,
                                   workspace_gb=workspace, sparse=dep.sparsity is not None, **kw)
        raise trt.TensorRTUnavailable(f"cannot build a TensorRT engine here ({reason}); {onnx_path} is written: "
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

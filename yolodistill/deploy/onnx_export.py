"""PyTorch -> ONNX for any student: TorchScript exporter (dynamo=False), opset >= 17, ONNX checker, optional
onnxslim, metadata, and an onnxruntime parity check (onnx_parity.py) before the file is put in place.

Why dynamo=False: the dynamo exporter of recent PyTorch drops the fake-quant ops, so a QAT student would
lose its QuantizeLinear/DequantizeLinear nodes; the TorchScript exporter maps each fake-quant op to a Q/DQ pair.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import time
import warnings
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import UserError
from .deployable import DETECT, INPUT_NAME, Deployable
from .onnx_parity import ParityError, ParityReport, check_parity
from .options import MIN_OPSET
from .qdq_coverage import QdqCoverage, merge_duplicate_qdq, qdq_coverage

LOGGER = logging.getLogger("yolodistill")

class QdqCoverageError(UserError):
    """An INT8 detector exported with Conv, Add or Concat nodes whose inputs have no Q/DQ (qdq_coverage.py)."""


@dataclass
class OnnxExport:
    path: Path
    precision: str  # fp32 | fp16 | int8
    parity: ParityReport
    qdq_nodes: int
    opset: int
    seconds: float
    coverage: Optional[QdqCoverage] = None  # INT8 only

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    def summary(self) -> str:
        mb = self.path.stat().st_size / 1e6 if self.path.exists() else float("nan")
        q = f", {self.qdq_nodes} Q/DQ nodes" if self.qdq_nodes else ""
        q += f" ({self.coverage.summary()})" if self.coverage else ""
        return (f"ONNX {self.precision} opset {self.opset}{q}: {self.path} ({mb:.1f} MB, {self.seconds:.1f}s); "
                f"{self.parity.summary()}")


def _writable_tmp(out: Path) -> Path:
    """A hidden temp path beside `out` (so os.replace is atomic), after checking the folder can be written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out.parent}: {e.strerror}") from None
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file path ending in .onnx")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write to {out.parent}: permission denied")
    return out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def count_qdq(model) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def export_onnx(dep: Deployable, out: Union[str, Path], *, batch: int = 1, dynamic: bool = False, half: bool = False,
                simplify: bool = False, opset: int = MIN_OPSET, tolerance: Optional[tuple[float, float]] = None,
                check_batch: Optional[int] = None, parity_files: Sequence[Path] = ()) -> OnnxExport:
    """Export `dep` to `out`; the file appears only once it passed the checker and the parity check (onnx_parity.py,
    on `parity_files` or yolov5's sample photos)."""
    import onnx

    from ..runtime.onnx_file import ort_session

    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset}: at least {MIN_OPSET} is needed (LayerNorm and Q/DQ per-channel forms)")
    if batch < 1:
        raise UserError("--batch must be at least 1")
    out = Path(out)
    tmp = _writable_tmp(out)
    precision = "int8" if dep.quantized else "fp16" if half else "fp32"
    half = _float16(dep, half)
    t0 = time.perf_counter()
    model = deepcopy(dep.model)
    x = dep.example_input(batch)
    if half:
        model, x = model.half(), x.half()
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in dep.output_names}} if dynamic else None
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Python scalars in yolov5's Detect, by design
            model(x)  # a dry run, as yolov5's export: Detect caches its grids, which then trace as constants
            torch.onnx.export(model, (x,), buf, opset_version=opset, dynamo=False, do_constant_folding=True,
                              input_names=[INPUT_NAME], output_names=dep.output_names, dynamic_axes=axes)
        proto = onnx.load_from_string(buf.getvalue())
        if simplify:
            proto = _slim(proto)
        coverage = _check_qdq(dep, proto, out) if dep.quantized else None
        for k, v in {**dep.metadata, "imgsz": list(dep.imgsz), "precision": precision,
                     "exported_by": "yolodistill"}.items():
            meta = proto.metadata_props.add()
            meta.key, meta.value = k, str(v)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        qdq_nodes = count_qdq(proto)
        if dep.quantized and not qdq_nodes:
            raise ParityError(f"the QAT student exported without QuantizeLinear/DequantizeLinear nodes; "
                              f"{out} was not written")
        parity = check_parity(dep, ort_session(tmp), precision, batch=check_batch or (2 if dynamic else batch),
                              tolerance=tolerance, files=parity_files)
        if not parity.passed:
            raise ParityError(f"parity check failed ({precision}): {parity.failure()}; {out} was not written "
                              f"(--tolerance ATOL RTOL to judge element-wise instead)")
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    except torch.onnx.errors.OnnxExporterError as e:
        raise UserError(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    report = OnnxExport(path=out, precision=precision, parity=parity, qdq_nodes=qdq_nodes, opset=opset,
                        seconds=time.perf_counter() - t0, coverage=coverage)
    LOGGER.info(report.summary())
    return report


def _float16(dep: Deployable, half: bool) -> bool:
    """--half, except for an INT8 (Q/DQ) export: float16 would put a Cast between each DequantizeLinear and its
    reader, which TensorRT then runs in float; TensorRT 10 builds a Q/DQ graph's few float layers in FP16 anyway."""
    if half and dep.quantized:
        LOGGER.warning("WARNING: --half is not applied to an INT8 (Q/DQ) export: the ONNX stays float32")
        return False
    return half


def _check_qdq(dep: Deployable, proto, out: Path) -> QdqCoverage:
    """One Q/DQ pair per tensor and scale (merged in place), then every Conv, Add and Concat must read INT8: a
    detector that would not is refused, a classifier (residual adds of timm models stay float) is warned about."""
    merge_duplicate_qdq(proto)
    coverage = qdq_coverage(proto, float_scopes=dep.float_scopes)
    if coverage.complete:
        return coverage
    why = (f"{coverage.summary()}: {coverage.describe_uncovered()} have a float input, so TensorRT would run them "
           f"in float with reformatting around them")
    if dep.legacy_int8:
        why += (" (its INT8 ranges are of the earlier conv-only scheme: `yolodistill export --int8 --data data.yaml` "
                "calibrates the current one)")
    if dep.task == DETECT:
        raise QdqCoverageError(f"incomplete INT8 export: {why}; {out} was not written")
    LOGGER.warning(f"WARNING: {why}")
    return coverage


def _slim(proto):
    try:
        import onnxslim
    except ImportError:
        raise UserError("--simplify needs onnxslim: pip install onnxslim") from None
    return onnxslim.slim(proto)

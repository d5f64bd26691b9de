"""ONNX files through onnxruntime: sessions (for the parity checks and the benchmark too), and an exported detector
that val scores and detect runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import UserError
from .exported import ExportedDetector
from .metadata import onnx_metadata


def ort_session(path: Union[str, Path], *, threads: int = 0, cuda: bool = False):
    """An onnxruntime InferenceSession (CPU unless `cuda` and the CUDA provider exists); threads 0 = ORT's choice."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3  # no per-node warnings on stderr
    if threads:
        so.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad or unsupported files
        raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None


class OnnxDetector(ExportedDetector):
    """An exported YOLOv5 detector run through onnxruntime (mAP of the ONNX file itself, e.g. of a Q/DQ INT8 model,
    not of the PyTorch model it came from). The file carries its class names; `data` is not needed."""

    file_kind = "the ONNX file"
    size_advice = "validate at its size, or export with --dynamic"

    def __init__(self, path: Union[str, Path], *, data: Optional[Union[str, Path]] = None, threads: int = 0):
        super().__init__()
        self.session = ort_session(path, threads=threads)
        meta = onnx_metadata(path)
        if meta.get("task", "detect") != "detect" or "names" not in meta:
            raise UserError(f"{path} is not a detector exported by yolodistill or yolov5 (no class names in it)")
        self.names = meta["names"]
        self.stride = torch.tensor([float(meta.get("stride", 32))])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.set_input_dims([d if isinstance(d, int) else None for d in inp.shape])  # a dynamic dim: a name or None
        self.fp16 = "float16" in inp.type

    def run_batch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0].astype(np.float32))

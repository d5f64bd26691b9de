"""onnxruntime sessions, and an exported detector wrapped so yolov5's val can score it (mAP of the ONNX file
itself, e.g. of a Q/DQ INT8 model, not of the PyTorch model it came from)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from .errors import UserError

LOGGER = logging.getLogger("yolodistill")


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


def onnx_metadata(session) -> dict:
    """metadata_props of the file, with stride/names parsed back from their text form."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    for k in ("stride", "names", "imgsz", "mean", "std"):
        if k in meta:
            try:
                meta[k] = ast.literal_eval(meta[k])
            except (ValueError, SyntaxError):
                pass
    return meta


class OnnxDetector(nn.Module):
    """An exported YOLOv5 detector behind the nn.Module interface yolov5's val.run expects of `model=`:
    forward(images (B, 3, H, W) in [0, 1]) -> (B, N, 5 + nc) decoded boxes, names and stride attributes."""

    def __init__(self, path: Union[str, Path], *, threads: int = 0):
        super().__init__()
        self.session = ort_session(path, threads=threads)
        meta = onnx_metadata(self.session)
        if meta.get("task", "detect") != "detect" or "names" not in meta:
            raise UserError(f"{path} is not a detector exported by yolodistill or yolov5 (no class names in it)")
        self.names = meta["names"]
        self.stride = torch.tensor([float(meta.get("stride", 32))])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.input_hw = tuple(inp.shape[2:]) if all(isinstance(s, int) for s in inp.shape[2:]) else None
        self.fp16 = "float16" in inp.type
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # val.run reads a device from it

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        if self.input_hw and tuple(images.shape[2:]) != self.input_hw:
            raise UserError(f"the ONNX file takes {self.input_hw[0]}x{self.input_hw[1]} images, got "
                            f"{images.shape[2]}x{images.shape[3]}: validate at its size, or export with --dynamic")
        x = images.detach().float().cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        if self.fixed_batch and x.shape[0] != self.fixed_batch:  # a static-batch file: run image by image
            if self.fixed_batch != 1:
                raise UserError(f"the ONNX file has a fixed batch of {self.fixed_batch}; export with --dynamic")
            out = np.concatenate([self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(len(x))])
        else:
            out = self.session.run(None, {self.input_name: x})[0]
        return torch.from_numpy(out.astype(np.float32)).to(images.device)

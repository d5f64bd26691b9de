"""TensorRT engines, run: whether this machine can (TensorRT and a CUDA device), a runner with torch CUDA tensors as
its buffers (what the benchmark times and the engine parity check compares), and an engine as a detector that val
scores and detect runs -- the engine that deploys on a Jetson. Engines are built in deploy/tensorrt.py.

TensorRT is an optional extra, imported only inside functions, so this module imports anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import UserError
from .exported import ExportedDetector
from .metadata import class_names, sibling_onnx_metadata

PathLike = Union[str, os.PathLike]
OUTPUT_NAME = "output0"  # what yolov5 and yolodistill's ONNX exports call the decoded boxes
_INSTALL_HINT = ('pip install "yolodistill[tensorrt]" on an x86 machine with an NVIDIA GPU, '
                 "or use the TensorRT that JetPack installs on a Jetson")
# TensorRT DataType member names -> torch dtype names; names, so the table needs no TensorRT at import
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                 "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}


class TensorRTUnavailable(UserError):
    """TensorRT or a CUDA device is missing here, so engines can be neither built nor run."""


def tensorrt_status() -> tuple[bool, str]:
    """(True, "TensorRT X.Y.Z, CUDA device NAME") where engines can be built and run, else (False, why not)."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        return False, f"the `tensorrt` package is not installed ({_INSTALL_HINT})"
    except (ImportError, OSError) as e:  # installed, but its CUDA libraries do not load
        return False, f"the `tensorrt` package is installed but cannot be loaded ({e})"
    if not torch.cuda.is_available():
        return False, (f"TensorRT {trt.__version__} is installed but there is no CUDA device "
                       f"(torch.cuda.is_available() is False)")
    return True, f"TensorRT {trt.__version__}, CUDA device {torch.cuda.get_device_name()}"


class TensorRTRunner:
    """Runs a serialized engine with torch CUDA tensors as its input and output buffers (no pycuda)."""

    def __init__(self, engine_path: PathLike):
        engine_path = Path(engine_path)
        ok, reason = tensorrt_status()
        if not ok:
            raise TensorRTUnavailable(f"cannot run TensorRT engine {engine_path} here: {reason}")
        import tensorrt as trt

        try:
            data = engine_path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read TensorRT engine {engine_path}: {e.strerror or e}") from e
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # kept: the engine must not outlive its runtime
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise UserError(f"{engine_path} is not an engine this TensorRT ({trt.__version__}) can load: engines "
                            f"only run on the TensorRT version and GPU model that built them, so rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise UserError(f"{engine_path} has {len(inputs)} inputs; TensorRTRunner feeds one image batch")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self.dtypes = {n: _torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def run_torch(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs as CUDA tensors, enqueued on torch's current stream and not waited for: what timing wants."""
        x = x.to(device="cuda", dtype=self.dtypes[self.input_name]).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise UserError(f"input shape {tuple(x.shape)} is outside what this engine was built for "
                            f"({tuple(self.engine.get_tensor_shape(self.input_name))}, -1 = any in its profile)")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outputs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        # x and the outputs come from torch's caching allocator on this same stream, so memory freed after
        # return is not reused before the engine's kernels finish
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT failed to enqueue the engine")
        return outputs

    def __call__(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """Outputs as numpy arrays for an (N, C, H, W) numpy array or tensor."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        outputs = self.run_torch(x)  # .cpu() below waits for the stream
        return [(o.float() if o.dtype == torch.bfloat16 else o).cpu().numpy() for o in outputs]


def _torch_dtype(trt_dtype: Any) -> Any:
    """The torch dtype for a TensorRT DataType (matched by member name, e.g. HALF -> torch.float16)."""
    name = trt_dtype.name
    if name not in _TORCH_DTYPES:
        raise UserError(f"TensorRT tensors of type {name} have no torch equivalent here")
    return getattr(torch, _TORCH_DTYPES[name])


class TensorRTDetector(ExportedDetector):
    """A YOLOv5 detector engine, run by TensorRTRunner; its class names and stride come from the .onnx file beside
    it (an engine carries no metadata), else from the dataset yaml `data`."""

    file_kind = "the TensorRT engine"

    def __init__(self, path: Union[str, Path], *, data: Optional[Union[str, Path]] = None):
        super().__init__()
        path = Path(path)
        self.runner = TensorRTRunner(path)
        engine, input_name = self.runner.engine, self.runner.input_name
        shape = tuple(int(d) for d in engine.get_tensor_shape(input_name))  # -1 where dynamic
        if len(shape) != 4:
            raise UserError(f"{path} takes input of shape {shape}; a detector engine takes (N, 3, H, W) images")
        self.set_input_dims([d if d > 0 else None for d in shape])
        outputs = self.runner.output_names
        self.output_index = outputs.index(OUTPUT_NAME) if OUTPUT_NAME in outputs else 0
        num_classes = int(engine.get_tensor_shape(outputs[self.output_index])[-1]) - 5
        meta = sibling_onnx_metadata(path)
        self.names = class_names(path, meta, data, num_classes)
        self.stride = torch.tensor([float(meta.get("stride", 32))])

    def run_batch(self, images: torch.Tensor) -> torch.Tensor:
        # the output stays on the GPU, on torch's current stream; forward's .to() orders after it (or waits, to
        # the CPU)
        return self.runner.run_torch(images)[self.output_index]

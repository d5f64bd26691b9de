"""A TensorRT engine wrapped as OnnxDetector wraps an ONNX file (onnx_runtime.py), so val scores and detect runs
the engine that deploys on a Jetson, through deploy.tensorrt's TensorRTRunner.

An engine file carries no metadata. `yolodistill export` always builds it from the .onnx of the same stem, so the
class names and stride come from that file; else from a dataset yaml (--data); else class0..N-1, with a warning.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .deploy.tensorrt import TensorRTRunner
from .errors import UserError

LOGGER = logging.getLogger("yolodistill")
OUTPUT_NAME = "output0"  # what yolov5 and yolodistill's ONNX exports call the decoded boxes


class TensorRTDetector(nn.Module):
    """A YOLOv5 detector engine behind the interface yolov5's val.run expects of `model=`:
    forward(images (B, 3, H, W) in [0, 1]) -> (B, N, 5 + nc) decoded boxes, with names, stride and input_hw."""

    def __init__(self, path: Union[str, Path], *, data: Optional[Union[str, Path]] = None):
        super().__init__()
        path = Path(path)
        self.runner = TensorRTRunner(path)
        engine, input_name = self.runner.engine, self.runner.input_name
        shape = tuple(int(d) for d in engine.get_tensor_shape(input_name))  # -1 where dynamic
        if len(shape) != 4:
            raise UserError(f"{path} takes input of shape {shape}; a detector engine takes (N, 3, H, W) images")
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.input_hw = shape[2:] if min(shape[2:]) > 0 else None
        outputs = self.runner.output_names
        self.output_index = outputs.index(OUTPUT_NAME) if OUTPUT_NAME in outputs else 0
        num_classes = int(engine.get_tensor_shape(outputs[self.output_index])[-1]) - 5
        meta = sibling_onnx_metadata(path)
        self.names = class_names(path, meta, data, num_classes)
        self.stride = torch.tensor([float(meta.get("stride", 32))])
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # val.run reads a device from it

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        if self.input_hw and tuple(images.shape[2:]) != self.input_hw:
            raise UserError(f"the TensorRT engine takes {self.input_hw[0]}x{self.input_hw[1]} images, got "
                            f"{images.shape[2]}x{images.shape[3]}: run it at its size")
        if self.fixed_batch and images.shape[0] != self.fixed_batch:  # a static-batch engine: image by image
            if self.fixed_batch != 1:
                raise UserError(f"the TensorRT engine has a fixed batch of {self.fixed_batch}; export with --dynamic")
            chunks = images.split(1)
        else:
            chunks = (images,)
        # outputs stay on the GPU, on torch's current stream; .to() below orders after them (or waits, to the CPU)
        out = torch.cat([self.runner.run_torch(chunk)[self.output_index] for chunk in chunks])
        return out.float().to(images.device)


def sibling_onnx_metadata(engine_path: Path) -> dict:
    """The metadata of the .onnx file the engine was built from (same stem, same folder), {} if there is none."""
    onnx_path = engine_path.with_suffix(".onnx")
    if not onnx_path.is_file():
        return {}
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a damaged file only costs us the names
        LOGGER.warning(f"WARNING: cannot read {onnx_path} for the engine's class names ({type(e).__name__})")
        return {}
    meta = {}
    for prop in proto.metadata_props:
        try:
            meta[prop.key] = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            meta[prop.key] = prop.value
    return meta


def class_names(engine_path: Path, meta: dict, data: Optional[Union[str, Path]], num_classes: int):
    """The engine's class names: the sibling ONNX file's, else the dataset yaml's, else class0..N-1."""
    if "names" in meta:
        names, origin = meta["names"], engine_path.with_suffix(".onnx")
    elif data:
        names, origin = _yaml_names(Path(data)), data
    else:
        LOGGER.warning(f"WARNING: {engine_path} carries no class names and there is no "
                       f"{engine_path.with_suffix('.onnx').name} beside it: labelling class0..class{num_classes - 1} "
                       f"(pass --data with the dataset yaml for names)")
        return [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise UserError(f"{engine_path} predicts {num_classes} classes but {origin} names {len(names)}")
    return names


def _yaml_names(data: Path):
    import yaml

    try:
        names = (yaml.safe_load(data.read_text()) or {}).get("names")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise UserError(f"cannot read class names from --data {data}: {e}") from None
    if not isinstance(names, (list, dict)):
        raise UserError(f"--data {data} has no `names` list")
    return names

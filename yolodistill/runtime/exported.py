"""What every exported detector file shares once it is open: the interface yolov5's val.run expects of `model=`,
and the input an exported file fixes (its batch, its image size), checked here once for every format."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UserError


class ExportedDetector(nn.Module):
    """An exported YOLOv5 detector: forward(images (B, 3, H, W) in [0, 1]) -> (B, N, 5 + nc) decoded boxes, with
    `names`, `stride`, `fixed_batch` and `input_hw` (None where the file leaves them dynamic).

    A format subclasses it: its __init__(path, *, data=None) opens the file, sets names and stride and calls
    set_input_dims(); run_batch() runs one batch the file accepts. `data` (a dataset yaml) is there for formats
    whose files carry no class names.
    """

    file_kind = "the exported file"  # how errors name the file: "the ONNX file", "the TensorRT engine"
    size_advice = "run it at its size"  # what an error about another image size advises

    def __init__(self):
        super().__init__()
        self.names: Union[dict, list] = {}
        self.stride = torch.tensor([32.0])
        self.fixed_batch: Optional[int] = None
        self.input_hw: Optional[tuple[int, ...]] = None
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # val.run reads a device from it

    def set_input_dims(self, dims: Sequence[Optional[int]]) -> None:
        """The file's input dims (N, C, H, W), None where one is dynamic: its fixed batch and (H, W), if fixed."""
        self.fixed_batch = dims[0]
        hw = tuple(dims[2:])
        self.input_hw = hw if all(d is not None for d in hw) else None

    def forward(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        if self.input_hw and tuple(images.shape[2:]) != self.input_hw:
            raise UserError(f"{self.file_kind} takes {self.input_hw[0]}x{self.input_hw[1]} images, got "
                            f"{images.shape[2]}x{images.shape[3]}: {self.size_advice}")
        if self.fixed_batch and images.shape[0] != self.fixed_batch:  # a static-batch file: image by image
            if self.fixed_batch != 1:
                raise UserError(f"{self.file_kind} has a fixed batch of {self.fixed_batch}; export with --dynamic")
            chunks = images.split(1)
        else:
            chunks = (images,)
        return torch.cat([self.run_batch(chunk) for chunk in chunks]).float().to(images.device)

    def run_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded boxes (B, N, 5 + nc) for a batch of the size and shape the file takes, on any device."""
        raise NotImplementedError

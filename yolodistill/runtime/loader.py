"""Which runtime opens which model file, by its suffix: load_detector, the one entry val, detect and the
trainer's last look load a detector through."""

from __future__ import annotations

import logging
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import UserError

if TYPE_CHECKING:
    from torch import nn

LOGGER = logging.getLogger("yolodistill")

# suffix -> "module.Class" in this package: an ExportedDetector subclass, imported only when such a file is opened
# (onnxruntime and TensorRT load only where they run). Any other suffix is read as a checkpoint.
RUNTIMES = {
    ".onnx": "onnx_file.OnnxDetector",
    ".engine": "tensorrt_engine.TensorRTDetector",
}
EXPORTED = tuple(RUNTIMES)  # files that run as exported, at the size they were exported for


def load_detector(weights: Union[str, Path], *, trust: bool = False,
                  data: Optional[Union[str, Path]] = None) -> nn.Module:
    """The detector in `weights`: a checkpoint's FP32 model, with its INT8 fake quantizers back on after --qat (so
    val and detect run what deploys); an exported file through its runtime in RUNTIMES (an .engine's class names
    from the .onnx beside it, else from the dataset yaml `data`)."""
    suffix = Path(weights).suffix.lower()
    if suffix in RUNTIMES:
        if not Path(weights).is_file():
            raise UserError(f"{weights} not found")
        module, _, name = RUNTIMES[suffix].rpartition(".")
        detector = getattr(import_module(f".{module}", __package__), name)
        return detector(weights, data=data)
    from ..students import DETECT, load_student  # yolov5 loads only for a checkpoint

    student = load_student(weights, trust=trust, task=DETECT)
    if student.quant:
        LOGGER.info(f"{weights} is a --qat student: it runs with its INT8 fake quantizers, as it deploys")
    return student.model

"""Any student checkpoint -> a model ready to trace for deployment, whichever task wrote it.

The checkpoint says what it is: a yolodistill classifier checkpoint carries `format`, a YOLOv5 checkpoint
carries a DetectionModel. Both are loaded weights-only. A QAT checkpoint (a `quant` entry) gets its INT8
fake quantizers back, so the export has QuantizeLinear/DequantizeLinear nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UserError
from ..compress import quant as q

DETECT, CLASSIFY = "detect", "classify"
INPUT_NAME = "images"  # yolov5's name; DetectMultiBackend and trtexec command lines expect it


@dataclass
class Deployable:
    """A student ready to export: FP32 model in eval mode plus what the ONNX file should record."""

    model: nn.Module
    task: str  # DETECT or CLASSIFY
    imgsz: tuple[int, int]  # (height, width) of the input
    source: Path
    output_names: list[str]
    metadata: dict = field(default_factory=dict)  # written into the ONNX file's metadata_props
    quantized: bool = False
    sparsity: Optional[str] = None

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A reproducible input: pixels in [0, 1] for a detector, normalised pixels for a classifier."""
        g = torch.Generator().manual_seed(seed)
        shape = (batch, 3, *self.imgsz)
        x = torch.rand(shape, generator=g)
        if self.task == CLASSIFY:
            mean = torch.tensor(self.metadata["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(self.metadata["std"]).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def describe(self) -> str:
        extra = (", INT8 QAT" if self.quantized else "") + (f", {self.sparsity} sparse" if self.sparsity else "")
        return f"{self.task} student {self.source.name} at {self.imgsz[0]}x{self.imgsz[1]}{extra}"


def _size(imgsz: Union[int, Sequence[int], None], default: int) -> tuple[int, int]:
    if imgsz is None or (isinstance(imgsz, (list, tuple)) and not imgsz):
        return default, default
    if isinstance(imgsz, int):
        return imgsz, imgsz
    sizes = [int(s) for s in imgsz]
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def load_deployable(path: Union[str, Path], *, imgsz: Union[int, Sequence[int], None] = None,
                    dynamic: bool = False, trust: bool = False) -> Deployable:
    """Read a detection or classification student (or teacher) checkpoint for export or benchmarking."""
    from .. import yolo_backend as yb
    from ..classification.models import CHECKPOINT_FORMAT

    path = Path(path)
    ckpt = yb.load_yolov5_checkpoint(path, trust=trust)  # weights-only; a classifier checkpoint is plain data
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        return _classifier(path, ckpt, imgsz)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, yb.DetectionModel):
        raise UserError(f"{path} is neither a YOLOv5 detection checkpoint nor a yolodistill classifier checkpoint")
    return _detector(path, ckpt, imgsz, dynamic)


def _detector(path: Path, ckpt: dict, imgsz, dynamic: bool) -> Deployable:
    from .. import yolo_backend as yb

    trained = (ckpt.get("opt") or {}).get("imgsz") if isinstance(ckpt.get("opt"), dict) else None
    base = yb.checkpoint_model(ckpt)
    size = _size(imgsz, int(trained or 640))
    stride = yb.max_stride(base)
    if any(s % stride for s in size):
        raise UserError(f"--imgsz {size[0]}x{size[1]} is not a multiple of the model's stride {stride}")
    # Fused first: BN folds into the conv weights exactly, and per-channel weight ranges follow the fold.
    model = yb.export_model(base, dynamic=dynamic)
    quant = ckpt.get("quant")
    if quant:
        q.attach_quantizers(model, quant)
        q.refresh_weight_ranges(model)
    meta = yb.export_metadata(base)
    return Deployable(model=model, task=DETECT, imgsz=size, source=path, output_names=["output0"],
                      metadata={"stride": meta["stride"], "names": meta["names"], "task": DETECT},
                      quantized=bool(quant), sparsity=ckpt.get("sparsity"))


def _classifier(path: Path, ckpt: dict, imgsz) -> Deployable:
    from ..classification.models import classifier_from_checkpoint
    from ..classification.predict import head_from_checkpoint

    model = classifier_from_checkpoint(ckpt)
    classes = list(ckpt["classes"])
    if ckpt.get("head"):  # a CLIP-distilled student: the deployed graph ends in its class head
        model = nn.Sequential(model, head_from_checkpoint(ckpt["head"])).eval()
        classes = list(ckpt["head"]["classes"])
    size = _size(imgsz, int(ckpt["imgsz"]))
    meta = {"task": CLASSIFY, "names": dict(enumerate(classes)), "mean": list(ckpt["mean"]),
            "std": list(ckpt["std"]), "arch": ckpt["arch"]}
    return Deployable(model=model.float().eval(), task=CLASSIFY, imgsz=size, source=path, output_names=["logits"],
                      metadata=meta, quantized=bool(ckpt.get("quant")), sparsity=ckpt.get("sparsity"))

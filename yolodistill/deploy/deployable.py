"""Any student checkpoint -> a model ready to trace for deployment, whichever task wrote it.

yolodistill.students reads the checkpoint (and tells the formats apart). A QAT checkpoint (a `quant` entry) gets
its INT8 fake quantizers back, so the export has QuantizeLinear/DequantizeLinear nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..compress import quant as q
from ..errors import UserError
from ..students import CLASSIFY, DETECT, Student, load_student
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
    # ONNX name scopes whose own nodes stay float by design (the Detect head's box decoding): the Q/DQ coverage
    # check leaves them out
    float_scopes: tuple[str, ...] = ()
    legacy_int8: bool = False  # a detector with INT8 ranges of format 1 (no residual-add or concatenation ranges)

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
    student = load_student(path, trust=trust)
    if student.task == CLASSIFY:
        return _classifier(student, imgsz)
    return _detector(student, imgsz, dynamic)


def _detector(student: Student, imgsz, dynamic: bool) -> Deployable:
    from .. import yolo_backend as yb

    size = _size(imgsz, int(student.meta["imgsz"] or 640))
    stride = student.meta["stride"]
    if any(s % stride for s in size):
        raise UserError(f"--imgsz {size[0]}x{size[1]} is not a multiple of the model's stride {stride}")
    # Fused first: BN folds into the conv weights exactly, and per-channel weight ranges follow the fold.
    model = yb.export_model(yb.checkpoint_model(student.checkpoint), dynamic=dynamic)
    if student.quant:
        q.attach_quantizers(model, student.quant)
        q.refresh_weight_ranges(model)
    return Deployable(model=model, task=DETECT, imgsz=size, source=student.path, output_names=["output0"],
                      metadata={"stride": stride, "names": student.meta["names"], "task": DETECT},
                      quantized=bool(student.quant), sparsity=student.sparsity, float_scopes=yb.float_scopes(model),
                      legacy_int8=q.is_legacy_state(student.quant))


def _classifier(student: Student, imgsz) -> Deployable:
    from ..classification.predict import head_from_checkpoint

    ckpt, path, model = student.checkpoint, student.path, student.model
    classes = list(ckpt["classes"])
    if ckpt.get("head"):  # a CLIP-distilled student: the deployed graph ends in its class head
        model = nn.Sequential(model, head_from_checkpoint(ckpt["head"])).eval()
        classes = list(ckpt["head"]["classes"])
    size = _size(imgsz, int(ckpt["imgsz"]))
    meta = {"task": CLASSIFY, "names": dict(enumerate(classes)), "mean": list(ckpt["mean"]),
            "std": list(ckpt["std"]), "arch": ckpt["arch"]}
    return Deployable(model=model.float().eval(), task=CLASSIFY, imgsz=size, source=path, output_names=["logits"],
                      metadata=meta, quantized=bool(ckpt.get("quant")), sparsity=ckpt.get("sparsity"))

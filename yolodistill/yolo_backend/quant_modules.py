"""YOLOv5's blocks with INT8 fake quantizers on the inputs of their residual adds and concatenations, so that
TensorRT keeps the whole network in INT8 (compress/quant.py quantizes the conv inputs and weights).

Where the Q/DQ pairs go, and which share a scale (NVIDIA's YOLOv5/v7 QAT samples, yolo_deepstream/yolov7_qat,
and TensorRT's Q/DQ placement rules):
- Every input of a residual add and of a concatenation is fake-quantized directly before it (after a MaxPool or a
  nearest Upsample, which commute with quantization), so the add and the concatenation run in INT8.
- All inputs of a concatenation share one scale, and so does the conv that reads the concatenation: TensorRT drops
  a concatenation by writing its inputs into one INT8 buffer, which needs one scale for all of them; with another
  scale after it, every input would be re-quantized by an extra reformatting kernel.
- A tensor read by several layers gets one scale (a C3's cv1 and cv2 both read x; a bottleneck's cv1 and its
  shortcut read x; a backbone stage feeds the next conv and a neck concatenation; P3/P4 feed Detect and the next
  conv). The conv that produces it can then write one INT8 tensor; with two scales it writes float and each reader
  quantizes its own copy.
- The branch input of a residual add (cv2's output, read by nothing else) keeps its own scale: TensorRT's INT8 add
  takes inputs of different scales, and a shared one would only cost the branch precision.
The last two rules join scales across layers, so they are applied to the whole DetectionModel (share_tensor_scales).
A calibrated shared quantizer holds the max over all the tensors it reads. The Detect head's box decoding stays
float by design (deploy/qdq_coverage.py leaves it out of the check).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from ..compress.quant import FakeQuantizer, QuantizedBlock, rebuild_as, register_block_rules, replace_module
from ._yolov5 import Detect, DetectionModel  # first: _yolov5 imports yolov5 with its import warnings fenced
from yolov5.models.common import SPP, SPPF, C3, Bottleneck, Concat, Conv  # noqa: E402,I001

__all__ = ["QuantBottleneck", "QuantC3", "QuantSPPF", "QuantSPP", "QuantConcat", "quantize_yolov5_blocks",
           "share_tensor_scales", "float_scopes"]


def _input_quantizer(conv: Conv) -> FakeQuantizer:
    return conv.conv.input_quantizer


class QuantBottleneck(QuantizedBlock, Bottleneck):
    """Bottleneck whose residual add takes INT8 inputs: the shortcut x at the scale cv1 reads x with, the branch at
    its own. Swapped in only where the add exists (shortcut and c1 == c2)."""

    plain_class = Bottleneck

    def add_quantizers(self, device: torch.device) -> None:
        self.residual_quantizer = _input_quantizer(self.cv1)  # the same tensor x as cv1 reads: one scale
        self.branch_quantizer = FakeQuantizer().to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual_quantizer(x) + self.branch_quantizer(self.cv2(self.cv1(x)))


class QuantC3(QuantizedBlock, C3):
    """C3 whose concatenation takes INT8 inputs at the scale cv3 reads the result with; cv1 and cv2 read x at one."""

    plain_class = C3

    def add_quantizers(self, device: torch.device) -> None:
        self.cv2.conv.input_quantizer = _input_quantizer(self.cv1)
        self.cat_quantizer = _input_quantizer(self.cv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.cat_quantizer
        return self.cv3(torch.cat((q(self.m(self.cv1(x))), q(self.cv2(x))), 1))


class QuantSPPF(QuantizedBlock, SPPF):
    """SPPF whose concatenation of x and its three max-pools takes INT8 inputs at cv2's input scale."""

    plain_class = SPPF

    def add_quantizers(self, device: torch.device) -> None:
        self.cat_quantizer = _input_quantizer(self.cv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        q = self.cat_quantizer  # after each pool, directly before the concatenation (max commutes with rounding)
        return self.cv2(torch.cat((q(x), q(y1), q(y2), q(self.m(y2))), 1))


class QuantSPP(QuantizedBlock, SPP):
    """SPP (older YOLOv5 configs) quantized as SPPF."""

    plain_class = SPP
    add_quantizers = QuantSPPF.add_quantizers  # the same rule: the concat takes INT8 inputs at cv2's input scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        q = self.cat_quantizer
        return self.cv2(torch.cat([q(x)] + [q(m(x)) for m in self.m], 1))


class QuantConcat(QuantizedBlock, Concat):
    """The neck's Concat layer with one quantizer for all its inputs (share_tensor_scales joins it with the scale
    of the layer that reads the result)."""

    plain_class = Concat

    def add_quantizers(self, device: torch.device) -> None:
        self.cat_quantizer = FakeQuantizer().to(device)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.cat_quantizer(t) for t in x], self.d)


_TWINS = {Bottleneck: QuantBottleneck, C3: QuantC3, SPPF: QuantSPPF, SPP: QuantSPP, Concat: QuantConcat}


@register_block_rules
def quantize_yolov5_blocks(model: nn.Module) -> list[str]:
    """Swap YOLOv5's blocks (exact classes: a subclass may compute otherwise) for their quantized twins, in place,
    after compress.quant quantized the convs; then share_tensor_scales() on a DetectionModel. Returns the blocks."""
    names = []
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    for name, module in list(model.named_modules()):
        cls = _TWINS.get(type(module))
        if cls is None or (cls is QuantBottleneck and not module.add):
            continue
        convs = [m for m in module.modules() if isinstance(m, Conv)]
        if not all(hasattr(c.conv, "input_quantizer") for c in convs):
            continue  # convs left unquantized: nothing to share a scale with
        twin = rebuild_as(module, cls)
        twin.add_quantizers(device)
        replace_module(model, name, twin)
        names.append(name)
    if names and isinstance(model, DetectionModel):
        share_tensor_scales(model)
    return names


def _readers(layer: nn.Module, k: int) -> list[FakeQuantizer] | None:
    """The quantizers reading input k of a DetectionModel layer: None for a layer that passes it on unchanged up to
    rounding (nearest Upsample: its readers read this input too), [] for a layer unknown here (no sharing)."""
    if isinstance(layer, nn.Upsample) and layer.mode == "nearest":
        return None
    if isinstance(layer, Conv) and hasattr(layer.conv, "input_quantizer"):
        return [layer.conv.input_quantizer]
    if isinstance(layer, QuantC3):
        return [_input_quantizer(layer.cv1), _input_quantizer(layer.cv2)]
    if isinstance(layer, (QuantSPPF, QuantSPP)):
        return [_input_quantizer(layer.cv1)]
    if isinstance(layer, QuantConcat):
        return [layer.cat_quantizer]
    if isinstance(layer, Detect) and hasattr(layer.m[k], "input_quantizer"):
        return [layer.m[k].input_quantizer]
    return []


def _tensor_groups(model: DetectionModel) -> Iterable[list[FakeQuantizer]]:
    """Per layer output, the quantizers that read it; per Concat layer, its quantizer with those reading its result."""
    layers = model.model
    readers: dict[int, list[FakeQuantizer]] = defaultdict(list)  # layer index (-1: the image) -> its readers
    groups = []
    for j in reversed(range(len(layers))):  # a layer's readers are all later layers: complete when it is reached
        layer = layers[j]
        if isinstance(layer, QuantConcat):
            groups.append([layer.cat_quantizer, *readers[j]])
        for k, f in enumerate(layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]):
            got = _readers(layer, k)
            readers[j + f if f < 0 else f] += readers[j] if got is None else got  # yolov5: negative = relative
    return groups + list(readers.values())


def share_tensor_scales(model: DetectionModel) -> int:
    """Make each group of quantizers that must agree (module docstring) one FakeQuantizer, in place, by union-find
    over the groups; returns how many activation quantizers remain."""
    parent: dict[int, FakeQuantizer] = {}

    def root(q: FakeQuantizer) -> FakeQuantizer:
        while parent.get(id(q), q) is not q:
            q = parent[id(q)]
        return q

    for group in _tensor_groups(model):
        for other in group[1:]:
            a, b = root(group[0]), root(other)
            if a is not b:
                parent[id(b)] = a
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, FakeQuantizer) and root(child) is not child:
                module._modules[name] = root(child)
    return sum(1 for m in model.modules() if isinstance(m, FakeQuantizer) and not m.dynamic)


def float_scopes(model: nn.Module) -> tuple[str, ...]:
    """ONNX name scopes (as torch.onnx names nodes: `/model.24/Add`) whose own nodes stay float by design: the
    Detect head's box decoding (sigmoid, grid and anchor arithmetic, concatenation). Its convs (`/model.24/m.0/Conv`)
    sit in child scopes and are not covered by this."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        return ()
    return tuple(f"/model.{i}" for i, layer in enumerate(layers) if isinstance(layer, Detect))

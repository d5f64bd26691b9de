"""2:4 structured sparsity: in every group of 4 consecutive input weights, 2 are zero (what Ampere-and-later
sparse tensor cores, Jetson Orin included, can skip).

Why our own magnitude mask and not modelopt.torch.sparsity: modelopt does not import next to yolov5's
huggingface-hub pin (see quant.py), and for CNNs its default is the same rule, keep the 2 largest |w| of 4.

Groups run along the input channels, per output channel and kernel position, as TensorRT reads them:
a conv weight (K, C, R, S) is grouped over C, a linear weight (out, in) over `in`. Layers whose input width
is not a multiple of 4 (the 3-channel stem) and grouped or depthwise convs are left dense. The masks are
computed once and kept fixed: after every optimizer step the pruned weights are zeroed again, and their
gradients are zeroed so momentum cannot push them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Optional

import numpy as np
import torch
from torch import nn

__all__ = ["PATTERN", "parse_pattern", "SparsityMasks", "prune_2to4", "violations_2to4", "onnx_2to4_report"]

PATTERN = "2:4"
_GROUP, _KEEP = 4, 2


def parse_pattern(text: Optional[str]) -> Optional[str]:
    """'2:4' -> '2:4'; '' or None -> None; anything else is an error (only 2:4 is accelerated)."""
    if not text:
        return None
    if text.strip() != PATTERN:
        raise ValueError(f"--sparsity {text!r}: only 2:4 is supported (what sparse tensor cores accelerate)")
    return PATTERN


def _grouped(weight: torch.Tensor) -> torch.Tensor:
    """(out, in[, R, S]) -> (groups, 4): consecutive input channels per output channel and kernel position."""
    w = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    return w.reshape(-1, _GROUP)


def _ungrouped(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4:
        k, c, r, s = like.shape
        return groups.reshape(k, r, s, c).permute(0, 3, 1, 2)
    return groups.reshape(like.shape)


def prunable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.in_channels % _GROUP == 0
    return isinstance(module, nn.Linear) and module.in_features % _GROUP == 0


def magnitude_mask(weight: torch.Tensor) -> torch.Tensor:
    """1 for the 2 largest |w| of each group of 4 input weights, 0 for the others; same shape as weight."""
    groups = _grouped(weight.detach().abs())
    keep = groups.topk(_KEEP, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0)
    return _ungrouped(mask, weight).contiguous()


class SparsityMasks:
    """Fixed 2:4 masks over a model's prunable layers; apply() after each optimizer step keeps them."""

    def __init__(self, masks: dict[str, tuple[nn.Parameter, torch.Tensor]]):
        self.masks = masks
        self._handles = [p.register_hook(lambda g, m=m: g * m.to(g.dtype)) for p, m in masks.values()]

    @torch.no_grad()
    def apply(self) -> None:
        for p, m in self.masks.values():
            p.mul_(m.to(p.dtype))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def layers(self) -> list[str]:
        return list(self.masks)

    def describe(self) -> str:
        pruned = sum(int(m.numel() - m.sum()) for _, m in self.masks.values())
        total = sum(m.numel() for _, m in self.masks.values())
        return f"2:4 sparsity on {len(self.masks)} layers: {pruned}/{total} weights zero"


def prune_2to4(model: nn.Module, skip: Iterable[str] = ()) -> SparsityMasks:
    """Mask every prunable conv/linear of `model` to 2:4 by magnitude (in place) and keep the masks."""
    skip = tuple(skip)
    masks = {}
    for name, module in model.named_modules():
        if prunable(module) and not any(name == s or name.startswith(s + ".") for s in skip):
            masks[name] = (module.weight, magnitude_mask(module.weight))
    sm = SparsityMasks(masks)
    sm.apply()
    return sm


def violations_2to4(weight: torch.Tensor | np.ndarray) -> int:
    """Groups of 4 input weights holding fewer than 2 zeros (0 means the tensor is 2:4 sparse)."""
    w = torch.from_numpy(np.array(weight)) if isinstance(weight, np.ndarray) else weight.detach()
    if w.dim() not in (2, 4) or w.shape[1] % _GROUP:
        raise ValueError(f"weight of shape {tuple(w.shape)} has no 2:4 groups")
    return int(((_grouped(w) == 0).sum(dim=1) < _GROUP - _KEEP).sum())


def _onnx_weights(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of the weight input of every Conv / Gemm / MatMul in an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        # A Q/DQ model feeds the weight through DequantizeLinear(QuantizeLinear(W)): zeros stay zeros.
        while name not in inits and name in producers and producers[name].op_type in (
                "DequantizeLinear", "QuantizeLinear", "Identity", "Transpose", "Cast"):
            name = producers[name].input[0]
        if name in inits:
            w = numpy_helper.to_array(inits[name])
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and _attr(node, "transB", 0) == 0):
                w = w.T  # stored (in, out): make it (out, in)
            yield node.name or name, w


def _attr(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def onnx_2to4_report(path: str) -> dict:
    """For an exported model: layers checked, layers that are 2:4 sparse, and groups violating the pattern
    in those (a layer is counted sparse when at least half its weights are zero and it has 2:4 groups)."""
    checked, sparse, bad = 0, [], 0
    for name, w in _onnx_weights(path):
        if w.ndim not in (2, 4) or w.shape[1] % _GROUP:
            continue
        checked += 1
        if (w == 0).mean() >= 0.5:
            sparse.append(name)
            bad += violations_2to4(w)
    return {"checked": checked, "sparse_layers": sparse, "violations": bad}

"""Q/DQ facts of an exported INT8 (QuantizeLinear/DequantizeLinear) ONNX file: which Conv, Add and Concat nodes
TensorRT cannot run in INT8, and one Q/DQ pair per tensor and scale.

Coverage: TensorRT's explicit quantization runs a node in INT8 only where its floating-point inputs come from a
DequantizeLinear (for a Conv, its weights too). A Conv, residual Add or Concat with a plain float input runs in
float, with reformatting kernels between it and its INT8 neighbours: what made QAT engines slower than PTQ ones
(NVIDIA/TensorRT#3038). Nodes directly in a `float_scopes` scope are left out: the Detect head's box decoding
(`/model.24/Add`, `/model.24/Concat`) is float by design, while its convs (`/model.24/m.0/Conv`) are checked.

Merging: the exporter writes one QuantizeLinear/DequantizeLinear pair per fake-quantizer call, so a tensor read by
two layers at one shared scale gets two identical pairs; merge_duplicate_qdq() leaves one pair whose
DequantizeLinear feeds both readers, the form in which TensorRT fuses the Q into the producing layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

CHECKED_OPS = ("Conv", "Add", "Concat")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class QdqCoverage:
    """Per op type, the nodes checked and those with a float input not produced by a DequantizeLinear."""

    checked: dict[str, int] = field(default_factory=dict)
    uncovered: list[tuple[str, list[str]]] = field(default_factory=list)  # (node name, its uncovered inputs)
    ops: dict[str, str] = field(default_factory=dict)  # node name -> op type, for the uncovered ones

    @property
    def complete(self) -> bool:
        return not self.uncovered

    def summary(self) -> str:
        """One line: `Q/DQ coverage: Conv 60/60, Add 8/8, Concat 13/13 nodes with INT8 inputs`."""
        missing = defaultdict(int)
        for name, _ in self.uncovered:
            missing[self.ops[name]] += 1
        counts = ", ".join(f"{op} {n - missing[op]}/{n}" for op, n in self.checked.items())
        return f"Q/DQ coverage: {counts} nodes with INT8 inputs"

    def describe_uncovered(self, limit: int = 4) -> str:
        """`/model.2/m/m.0/Add (input /model.2/cv1/act/Mul_output_0), ...` for the first `limit` nodes."""
        shown = "; ".join(f"{name} ({', '.join(inputs)})" for name, inputs in self.uncovered[:limit])
        more = f"; and {len(self.uncovered) - limit} more" if len(self.uncovered) > limit else ""
        return shown + more


def _load(model: Union[str, Path, Any]) -> Any:
    import onnx

    return onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model


def _constants(graph: Any) -> dict[str, Any]:
    """{tensor name: numpy value} of the initializers and Constant nodes."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _non_float(model: Any) -> set[str]:
    """Tensors that shape inference types as something other than a float (shape arithmetic: int64)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type not in (0, *floats)}


def _in_scopes(name: str, scopes: Sequence[str]) -> bool:
    return name.rpartition("/")[0] in scopes  # directly in the scope, not in a child module's


def qdq_coverage(model: Union[str, Path, Any], *, float_scopes: Sequence[str] = ()) -> QdqCoverage:
    """Check every Conv, Add and Concat of `model` (an ONNX path or ModelProto): each floating-point activation
    input (and a Conv's weight) must be the output of a DequantizeLinear. Constants and integer (shape) tensors
    are no activations; nodes directly in `float_scopes` are skipped."""
    model = _load(model)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants, non_float = _constants(graph), _non_float(model)
    report = QdqCoverage(checked={op: 0 for op in CHECKED_OPS})
    for node in graph.node:
        if node.op_type not in CHECKED_OPS or _in_scopes(node.name, float_scopes):
            continue
        inputs = node.input[:2] if node.op_type == "Conv" else node.input  # a Conv's bias stays INT32/float
        bad = [t for t in inputs if t and t not in constants and t not in non_float
               and getattr(producer.get(t), "op_type", None) != "DequantizeLinear"]
        if node.op_type == "Conv" and node.input[1] in constants:
            bad.append(node.input[1])  # a float weight initializer straight into the conv
        report.checked[node.op_type] += 1
        if bad:
            report.uncovered.append((node.name or node.output[0], bad))
            report.ops[node.name or node.output[0]] = node.op_type
    return report


def _qdq_key(node: Any, constants: dict) -> tuple | None:
    """What makes two Q (or two DQ) nodes the same: op, input tensor, scale and zero-point values, axis."""
    values = [constants.get(t) for t in node.input[1:]]
    if any(v is None for v in values):
        return None  # a computed scale: leave it alone
    attrs = tuple(sorted((a.name, a.i) for a in node.attribute))
    return (node.op_type, node.input[0], *((v.dtype.str, v.shape, v.tobytes()) for v in values), attrs)


def merge_duplicate_qdq(model: Any) -> int:
    """Merge identical QuantizeLinear nodes, then the DequantizeLinear nodes that became identical, in place
    (readers of a dropped node read the kept one); drops Constants left unused. Returns the nodes merged."""
    graph = model.graph
    constants = _constants(graph)
    merged = 0
    for op in _QDQ:  # Q first: merging them makes their DQs identical
        seen: dict[tuple, str] = {}
        renamed: dict[str, str] = {}
        keep = []
        for node in graph.node:
            for i, t in enumerate(node.input):
                if t in renamed:
                    node.input[i] = renamed[t]
            key = _qdq_key(node, constants) if node.op_type == op else None
            if key is not None and key in seen:
                renamed[node.output[0]] = seen[key]
                merged += 1
                continue
            if key is not None:
                seen[key] = node.output[0]
            keep.append(node)
        _replace_nodes(graph, keep)
    _drop_unused_constants(graph)
    return merged


def _replace_nodes(graph: Any, nodes: Iterable[Any]) -> None:
    import onnx

    copies = []
    for node in nodes:  # copied first: clearing the repeated field may release the messages it held
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def _drop_unused_constants(graph: Any) -> None:
    used = {t for node in graph.node for t in node.input} | {o.name for o in graph.output}
    _replace_nodes(graph, [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)])

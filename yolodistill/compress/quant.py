"""INT8 fake quantization for quantization-aware training, in the form TensorRT's explicit quantization reads.

Why our own ~150 lines and not a library: the PyPI `pytorch-quantization` is an empty placeholder, and
`nvidia-modelopt` (its maintained successor) from 0.45 on fails at its first quantize() with yolov5 7.0.14's
pin (huggingface-hub < 0.25: ImportError on EntryNotFoundError, seen with 0.45.0, 0.46.1 and 0.47.0). 0.44.0
works, but pip would not keep it there (modelopt declares the hub only in its [hf] extra, so nothing stops an
upgrade into the broken versions) and it brings pydantic, pulp, omegaconf, scipy and ninja for what PyTorch
already has: fake-quant ops with a straight-through gradient, which torch.onnx's TorchScript exporter turns
into QuantizeLinear / DequantizeLinear pairs that TensorRT 10 and 11 build INT8 kernels from and onnxruntime
runs. The scheme below is modelopt's INT8_DEFAULT_CFG (per-channel weights, per-tensor activations, max
calibration), so a modelopt-quantized student would export to the same graph.

The scheme is NVIDIA's recommended one for CNNs: symmetric signed INT8 (zero point 0), weights per output
channel, activations (the input of every conv and linear layer) per tensor, with ranges calibrated by the
maximum over a few batches and then kept fixed while the student fine-tunes. Per-channel weight scales make
the BatchNorm that follows a conv fold exactly into the quantized weight, so BN is left unfused during QAT.

Conv and linear inputs are not enough for TensorRT to keep a whole CNN in INT8: a residual add or a concatenation
whose inputs have no Q/DQ runs in float, with reformatting kernels around it (why QAT engines ran slower than PTQ
ones, NVIDIA/TensorRT#3038). Model families add quantizers to those inputs with block rules (register_block_rules;
yolo_backend/quant_modules.py registers YOLOv5's): blocks are swapped for QuantizedBlock twins whose extra
quantizers are children named `*_quantizer`, and inputs TensorRT needs at one scale share one FakeQuantizer.

The quantized student is saved as a plain model plus a `quant` entry of ranges (QUANT_FORMAT: {"layers": {layer:
{"input", "weight"}}, "blocks": {block quantizer path: amax}}); `attach_quantizers(model, state)` puts the
quantizers back for validation, resume or export. States of format 1 (before block rules: conv and linear inputs
only) still attach, to that scheme: such a student validates as it was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["QUANT_FORMAT", "LEGACY_FORMATS", "FakeQuantizer", "QuantConv2d", "QuantLinear", "QuantizedBlock",
           "register_block_rules", "apply_block_rules", "rebuild_as", "replace_module", "quantize_model", "calibrate",
           "quant_state", "attach_quantizers", "strip_quantizers", "is_quantized", "is_legacy_state",
           "block_quantizers", "split_state_dict", "refresh_weight_ranges", "load_plain_state_dict"]

# 2: block rules add quantizers on residual adds and concatenations and share scales (the "blocks" entry)
QUANT_FORMAT = "yolodistill-int8/2"
LEGACY_FORMATS = ("yolodistill-int8/1",)  # conv and linear inputs only
_QMIN, _QMAX = -128, 127
_BOUND = 127.0  # |x| = amax maps to 127: symmetric, the -128 code is never produced (TensorRT's convention)


class FakeQuantizer(nn.Module):
    """Quantize-dequantize to signed INT8 with scale amax / 127: per tensor, or per channel along `axis`.

    Three modes: calibrating (observe the running max |x|, pass x through), dynamic (a weight quantizer: the
    range follows the weight as it trains), and fixed (an activation quantizer after calibration).
    """

    def __init__(self, channels: Optional[int] = None, axis: int = 0, dynamic: bool = False):
        super().__init__()
        self.axis = axis if channels is not None else None
        self.dynamic = dynamic
        self.calibrating = False
        self.register_buffer("amax", torch.zeros(channels if channels is not None else ()))

    def _observed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().abs().float()
        if self.axis is None:
            return x.amax()
        return x.transpose(0, self.axis).reshape(x.shape[self.axis], -1).amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.amax.copy_(torch.maximum(self.amax, self._observed(x)))
            return x
        # Exporting reads the stored range, so it lands in the ONNX file as a constant, not as Abs/ReduceMax ops.
        if self.dynamic and not torch.onnx.is_in_onnx_export():
            self.amax.copy_(self._observed(x))
        scale = (self.amax.float() / _BOUND).clamp(min=1e-8)  # an all-zero channel (pruned) still gets a scale
        if torch.onnx.is_in_onnx_export():
            # A Python-made tensor traces as a Constant: TensorRT needs Q/DQ scales that are constants, and the
            # exporter would otherwise keep the Div/Clip above as graph nodes.
            scale = torch.tensor(scale.tolist(), dtype=torch.float32, device=x.device)
        dtype = x.dtype
        if dtype != torch.float32:
            x = x.float()  # the fake-quant kernels take FP32 (AMP and val's .half() hand us FP16)
        if self.axis is None:
            y = torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32, device=x.device),
                                                      _QMIN, _QMAX)
        else:
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
            y = torch.fake_quantize_per_channel_affine(x, scale, zero, self.axis, _QMIN, _QMAX)
        return y if y.dtype == dtype else y.to(dtype)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"int8 {kind}{', dynamic' if self.dynamic else ''}"


class _InputAndWeightQuantizers:
    """What QuantConv2d and QuantLinear add to their layer: the input fake-quantized per tensor (calibrated),
    the weight per output channel (its range read from the weight itself)."""

    def _add_quantizers(self, out_channels: int) -> None:
        self.input_quantizer = FakeQuantizer()
        self.weight_quantizer = FakeQuantizer(out_channels, axis=0, dynamic=True)

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_quantizer(x), self.weight_quantizer(self.weight)


class QuantConv2d(_InputAndWeightQuantizers, nn.Conv2d):
    """nn.Conv2d whose input and weight pass through INT8 fake quantization."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._add_quantizers(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(*self._quantized(x), self.bias)


class QuantLinear(_InputAndWeightQuantizers, nn.Linear):
    """nn.Linear whose input and weight pass through INT8 fake quantization."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._add_quantizers(self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(*self._quantized(x), self.bias)


class QuantizedBlock:
    """Mixin of a block's quantized twin (a residual add's or a concatenation's inputs fake-quantized).

    `plain_class` is the class it twins, which strip_quantizers() turns it back into; its own quantizers are
    children named `*_quantizer`, saved under "blocks" by their path (`model.2.cat_quantizer`). One FakeQuantizer
    may sit in several places (a conv's input and a concatenation's): those tensors then share one INT8 scale.
    """

    plain_class: type


_QUANT_CLASS = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
_PLAIN_CLASS = {QuantConv2d: nn.Conv2d, QuantLinear: nn.Linear}
# Model families whose blocks need quantizers beyond conv and linear inputs: fn(model) swaps in QuantizedBlock twins
# (after the convs are quantized, so it can share their input quantizers) and returns the blocks' names. A family
# registers when its backend module is imported, as feature losses do; a model of another family is left alone.
_BLOCK_RULES: list[Callable[[nn.Module], list[str]]] = []


def register_block_rules(rules: Callable[[nn.Module], list[str]]) -> Callable[[nn.Module], list[str]]:
    """Add a model family's block rules (see _BLOCK_RULES); returns them, so it works as a decorator."""
    if rules not in _BLOCK_RULES:
        _BLOCK_RULES.append(rules)
    return rules


def apply_block_rules(model: nn.Module) -> list[str]:
    """Run every registered family's block rules on `model` (conv/linear already quantized); returns the blocks."""
    return [name for rules in _BLOCK_RULES for name in rules(model)]


def _is_quantizer_key(key: str) -> bool:
    return any(part.endswith("_quantizer") for part in key.split("."))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where named_modules() says `name` is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def rebuild_as(module: nn.Module, cls: type) -> nn.Module:
    """A module of class `cls` sharing `module`'s parameters, buffers and children (so an optimizer built before
    still updates them), without its `*_quantizer` children."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items()})
    new._parameters = dict(module._parameters)
    new._buffers = {k: v for k, v in module._buffers.items()}
    new._modules = {k: v for k, v in module._modules.items() if not k.endswith("_quantizer")}
    return new


def quantize_model(model: nn.Module, *, blocks: bool = True) -> list[str]:
    """Swap every plain nn.Conv2d / nn.Linear for its fake-quantized twin, in place, then (with `blocks`) apply
    the registered block rules; returns the conv/linear layer names.

    The twins share the original Parameters, so hooks on parent modules, optimizers and EMA copies made
    afterwards all see the same weights. Ranges start at zero: calibrate() or attach_quantizers() sets them.
    """
    names = []
    for name, module in list(model.named_modules()):
        cls = _QUANT_CLASS.get(type(module))
        if cls is None:
            continue
        new = rebuild_as(module, cls)
        device = module.weight.device
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        new._modules["input_quantizer"] = FakeQuantizer().to(device)
        new._modules["weight_quantizer"] = FakeQuantizer(channels, axis=0, dynamic=True).to(device)
        replace_module(model, name, new)
        names.append(name)
    if blocks:
        apply_block_rules(model)
    return names


def _quantizers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)))


def block_quantizers(model: nn.Module) -> dict[str, FakeQuantizer]:
    """{path: quantizer} of every QuantizedBlock's own quantizers (a shared one under each of its paths)."""
    return {f"{name}.{child}": q for name, block in model.named_modules() if isinstance(block, QuantizedBlock)
            for child, q in block._modules.items() if child.endswith("_quantizer") and isinstance(q, FakeQuantizer)}


def is_quantized(model: nn.Module) -> bool:
    return any(True for _ in _quantizers(model))


def is_legacy_state(state: Optional[dict]) -> bool:
    """Whether a `quant` entry predates block rules (format 1: conv and linear inputs only)."""
    return isinstance(state, dict) and state.get("format") in LEGACY_FORMATS


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]) -> int:
    """Set every activation range to the max |input| seen over `batches` (model in eval mode); returns batches.

    A quantizer shared by several tensors sees them all and takes the max over them."""
    activations = [m for m in model.modules() if isinstance(m, FakeQuantizer) and not m.dynamic]
    was_training = model.training
    model.eval()
    for m in activations:
        m.amax.zero_()
        m.calibrating = True
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m in activations:
            m.calibrating = False
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    return n


def _amax(q: FakeQuantizer) -> torch.Tensor:
    return q.amax.detach().float().cpu().clone()


def quant_state(model: nn.Module) -> dict:
    """The ranges of a quantized model: {"format", "layers": {name: {"input": amax, "weight": amax (C,)}},
    "blocks": {path: amax}}."""
    layers = {name: {"input": _amax(m.input_quantizer), "weight": _amax(m.weight_quantizer)}
              for name, m in _quantizers(model)}
    return {"format": QUANT_FORMAT, "layers": layers,
            "blocks": {path: _amax(q) for path, q in block_quantizers(model).items()}}


def _differ(what: str, names: set, saved: set) -> ValueError:
    return ValueError(f"quantization state does not match the model: {len(names ^ saved)} {what} differ "
                      f"(e.g. {sorted(names ^ saved)[:3]})")


def attach_quantizers(model: nn.Module, state: dict) -> nn.Module:
    """Quantize `model` in place and load the ranges of quant_state(); layers and blocks must match by name.

    A format-1 state gets format 1's scheme (no block rules), so the model runs as it was trained and saved."""
    if not isinstance(state, dict) or state.get("format") not in (QUANT_FORMAT, *LEGACY_FORMATS):
        raise ValueError(f"not a {QUANT_FORMAT} quantization state")
    names = set(quantize_model(model, blocks=not is_legacy_state(state)))
    if names != set(state["layers"]):
        raise _differ("layers", names, set(state["layers"]))
    blocks, saved_blocks = block_quantizers(model), state.get("blocks") or {}
    if set(blocks) != set(saved_blocks):
        raise _differ("block quantizers", set(blocks), set(saved_blocks))
    for name, m in _quantizers(model):
        m.input_quantizer.amax.copy_(state["layers"][name]["input"])
        m.weight_quantizer.amax.copy_(state["layers"][name]["weight"])
    for path, q in blocks.items():
        q.amax.copy_(saved_blocks[path])
    # A shared quantizer got one value per place it sits in; a state whose values there differ was not made by
    # this scheme (the last value loaded would silently win).
    now = quant_state(model)
    unequal = [n for n in names if not torch.equal(now["layers"][n]["input"], state["layers"][n]["input"].float())]
    unequal += [p for p in blocks if not torch.equal(now["blocks"][p], saved_blocks[p].float())]
    if unequal:
        raise ValueError(f"quantization state gives different ranges to inputs that share one scale "
                         f"(e.g. {sorted(unequal)[:3]})")
    return model


@torch.no_grad()
def refresh_weight_ranges(model: nn.Module) -> None:
    """Set weight ranges from the weights as they are now (after training, or after BatchNorm was folded in)."""
    for _, m in _quantizers(model):
        m.weight_quantizer.amax.copy_(m.weight_quantizer._observed(m.weight))


def strip_quantizers(model: nn.Module) -> dict:
    """Turn a quantized model back into plain layers and blocks in place (for a plain checkpoint); returns its
    ranges."""
    refresh_weight_ranges(model)
    state = quant_state(model)
    quantized = [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear, QuantizedBlock))]
    for name, module in quantized:  # parents first (pre-order); a child is then found under its rebuilt parent
        plain = module.plain_class if isinstance(module, QuantizedBlock) else _PLAIN_CLASS[type(module)]
        replace_module(model, name, rebuild_as(module, plain))
    return state


def split_state_dict(state_dict: dict) -> tuple[dict, Optional[dict]]:
    """(plain state dict, quantization state or None) from a quantized model's state_dict()."""
    plain = {k: v for k, v in state_dict.items() if not _is_quantizer_key(k)}
    if len(plain) == len(state_dict):
        return plain, None
    layers: dict[str, dict] = {}
    blocks: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith(".input_quantizer.amax"):
            name = k[: -len(".input_quantizer.amax")]
            weight = state_dict[name + ".weight"].detach().float().cpu()
            # the weight's range as of now: the stored one dates from the last training forward
            layers[name] = {"input": v.detach().float().cpu().clone(),
                            "weight": weight.abs().reshape(weight.shape[0], -1).amax(dim=1)}
        elif k.endswith("_quantizer.amax") and not k.endswith(".weight_quantizer.amax"):
            blocks[k[: -len(".amax")]] = v.detach().float().cpu().clone()
    return plain, {"format": QUANT_FORMAT, "layers": layers, "blocks": blocks}


def load_plain_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Load a plain model's weights into a quantized twin: only the quantizer ranges may be missing."""
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not _is_quantizer_key(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state dict does not fit the model: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")

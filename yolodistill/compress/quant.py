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

The quantized student is saved as a plain model plus a `quant` entry of ranges ({layer: {"input", "weight"}});
`attach_quantizers(model, state)` puts the quantizers back for validation, resume or export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["QUANT_FORMAT", "FakeQuantizer", "QuantConv2d", "QuantLinear", "quantize_model", "calibrate",
           "quant_state", "attach_quantizers", "strip_quantizers", "is_quantized", "split_state_dict",
           "refresh_weight_ranges", "load_plain_state_dict"]

QUANT_FORMAT = "yolodistill-int8/1"
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


_QUANT_CLASS = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
_PLAIN_CLASS = {QuantConv2d: nn.Conv2d, QuantLinear: nn.Linear}
_QUANTIZER_KEYS = (".input_quantizer.", ".weight_quantizer.")


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _rebuilt(module: nn.Module, cls: type) -> nn.Module:
    """A module of class `cls` sharing `module`'s parameters (so an optimizer built before still updates them)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items()})
    new._parameters = dict(module._parameters)
    new._buffers = {k: v for k, v in module._buffers.items()}
    new._modules = {k: v for k, v in module._modules.items() if not k.endswith("_quantizer")}
    return new


def quantize_model(model: nn.Module) -> list[str]:
    """Swap every plain nn.Conv2d / nn.Linear for its fake-quantized twin, in place; returns the layer names.

    The twins share the original Parameters, so hooks on parent modules, optimizers and EMA copies made
    afterwards all see the same weights. Ranges start at zero: calibrate() or attach_quantizers() sets them.
    """
    names = []
    for name, module in list(model.named_modules()):
        cls = _QUANT_CLASS.get(type(module))
        if cls is None:
            continue
        new = _rebuilt(module, cls)
        device = module.weight.device
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        new._modules["input_quantizer"] = FakeQuantizer().to(device)
        new._modules["weight_quantizer"] = FakeQuantizer(channels, axis=0, dynamic=True).to(device)
        _swap(model, name, new)
        names.append(name)
    return names


def _quantizers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)))


def is_quantized(model: nn.Module) -> bool:
    return any(True for _ in _quantizers(model))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]) -> int:
    """Set every activation range to the max |input| seen over `batches` (model in eval mode); returns batches."""
    layers = [m for _, m in _quantizers(model)]
    was_training = model.training
    model.eval()
    for m in layers:
        m.input_quantizer.amax.zero_()
        m.input_quantizer.calibrating = True
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m in layers:
            m.input_quantizer.calibrating = False
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration needs at least one batch")
    return n


def quant_state(model: nn.Module) -> dict:
    """The ranges of a quantized model: {"format", "layers": {name: {"input": amax, "weight": amax (C,)}}}."""
    layers = {name: {"input": m.input_quantizer.amax.detach().float().cpu().clone(),
                     "weight": m.weight_quantizer.amax.detach().float().cpu().clone()}
              for name, m in _quantizers(model)}
    return {"format": QUANT_FORMAT, "layers": layers}


def attach_quantizers(model: nn.Module, state: dict) -> nn.Module:
    """Quantize `model` in place and load the ranges of quant_state(); the layers must match by name."""
    if not isinstance(state, dict) or state.get("format") != QUANT_FORMAT:
        raise ValueError(f"not a {QUANT_FORMAT} quantization state")
    names = set(quantize_model(model))
    saved = set(state["layers"])
    if names != saved:
        raise ValueError(f"quantization state does not match the model: {len(names ^ saved)} layers differ "
                         f"(e.g. {sorted(names ^ saved)[:3]})")
    for name, m in _quantizers(model):
        m.input_quantizer.amax.copy_(state["layers"][name]["input"])
        m.weight_quantizer.amax.copy_(state["layers"][name]["weight"])
    return model


@torch.no_grad()
def refresh_weight_ranges(model: nn.Module) -> None:
    """Set weight ranges from the weights as they are now (after training, or after BatchNorm was folded in)."""
    for _, m in _quantizers(model):
        m.weight_quantizer.amax.copy_(m.weight_quantizer._observed(m.weight))


def strip_quantizers(model: nn.Module) -> dict:
    """Turn a quantized model back into plain layers in place (for a plain checkpoint); returns its ranges."""
    refresh_weight_ranges(model)
    state = quant_state(model)
    for name, module in list(_quantizers(model)):
        _swap(model, name, _rebuilt(module, _PLAIN_CLASS[type(module)]))
    return state


def split_state_dict(state_dict: dict) -> tuple[dict, Optional[dict]]:
    """(plain state dict, quantization state or None) from a quantized model's state_dict()."""
    plain = {k: v for k, v in state_dict.items() if not any(q in k for q in _QUANTIZER_KEYS)}
    if len(plain) == len(state_dict):
        return plain, None
    layers: dict[str, dict] = {}
    for k, v in state_dict.items():
        if k.endswith(".input_quantizer.amax"):
            name = k[: -len(".input_quantizer.amax")]
            weight = state_dict[name + ".weight"].detach().float().cpu()
            # the weight's range as of now: the stored one dates from the last training forward
            layers[name] = {"input": v.detach().float().cpu().clone(),
                            "weight": weight.abs().reshape(weight.shape[0], -1).amax(dim=1)}
    return plain, {"format": QUANT_FORMAT, "layers": layers}


def load_plain_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Load a plain model's weights into a quantized twin: only the quantizer ranges may be missing."""
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not any(q in k for q in _QUANTIZER_KEYS)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state dict does not fit the model: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")

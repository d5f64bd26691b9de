"""Forward hooks that record named submodule outputs of one model (torchdistill's forward-hook shape)."""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from yolodistill.errors import UserError

_INDEXED = re.compile(r"^([^.]+)\.(\d+)$")  # "model.17": a YOLOv5 layer, the names users usually mean


def _valid_names_hint(names: Sequence[str], bad: str) -> str:
    """A short hint of valid layer names: the index range of indexed layers plus the closest matches."""
    ranges: dict[str, list[int]] = {}
    for name in names:
        m = _INDEXED.match(name)
        if m:
            ranges.setdefault(m.group(1), []).append(int(m.group(2)))
    parts = [f"{p}.{min(ix)}..{p}.{max(ix)}" for p, ix in ranges.items()]
    close = difflib.get_close_matches(bad, [n for n in names if n], n=3)
    if close:
        parts.append("closest: " + ", ".join(close))
    if not parts:
        parts.append("e.g. " + ", ".join([n for n in names if n][:5]))
    return "; ".join(parts)


class FeatureRecorder:
    """Forward hooks on named submodules of one model; outputs land in one dict that is emptied on each read."""

    def __init__(self, model: nn.Module, layer_names: Sequence[str], *, detach: bool = False):
        if isinstance(layer_names, str):  # a bare string would be hooked character by character
            layer_names = [layer_names]
        # Several distillation pairs may share a layer; one hook per layer is enough.
        self.layer_names: tuple[str, ...] = tuple(dict.fromkeys(layer_names))
        if not self.layer_names:
            raise UserError("no layers given to record")
        modules = dict(model.named_modules())
        for name in self.layer_names:
            if name not in modules or not name:
                raise UserError(f"unknown layer {name!r} in {type(model).__name__} "
                                f"(valid: {_valid_names_hint(list(modules), name)})")
        self.model = model
        self.detach = detach
        self._modules = {name: modules[name] for name in self.layer_names}
        self._handles: dict[str, RemovableHandle] = {}
        self._features: dict[str, torch.Tensor] = {}

    @property
    def attached(self) -> bool:
        """True while the hooks are registered on the model."""
        return bool(self._handles)

    def attach(self) -> "FeatureRecorder":
        """Register one forward hook per layer; a second call is a no-op."""
        if not self._handles:
            self._handles = {name: module.register_forward_hook(self._hook_for(name))
                             for name, module in self._modules.items()}
        return self

    def remove(self) -> None:
        """Remove every hook this recorder registered (and drop captures, which may hold graphs)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        self._features = {}

    def pop(self) -> dict[str, torch.Tensor]:
        """Captured outputs {layer name: (B, C, H, W)} of the last forward; the store is emptied."""
        features, self._features = self._features, {}
        missing = [name for name in self.layer_names if name not in features]
        if missing:
            why = "" if self.attached else " (hooks are not attached)"
            raise RuntimeError(f"no output recorded for layer(s) {', '.join(missing)}{why}: "
                               f"did the forward pass run through them since the last pop()?")
        return features

    @contextmanager
    def detached(self) -> Iterator["FeatureRecorder"]:
        """Hooks removed inside the block (deep copies and checkpoints of the model stay plain), restored after."""
        was_attached = self.attached
        # Hook closures reference this recorder and its captured tensors: a deepcopy or pickle of the
        # model taken while they are registered would drag both along.
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        try:
            yield self
        finally:
            if was_attached:
                self.attach()

    def __enter__(self) -> "FeatureRecorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                # Raised during the forward pass, so a bad layer choice fails on the first batch (or the probe).
                raise UserError(f"layer {name!r} ({type(module).__name__}) outputs a {type(output).__name__}, "
                                f"not a tensor: pick a feature layer (e.g. one feeding the Detect head)")
            self._features[name] = output.detach() if self.detach else output
        return hook

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"FeatureRecorder({list(self.layer_names)}, detach={self.detach}, {state})"

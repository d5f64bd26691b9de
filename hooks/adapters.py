"""Feature shapes by probing, and connectors that map student features onto the teacher's (mmrazor-style)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from yolodistill.errors import UserError
from .recorder import FeatureRecorder


def adapter_key(student_name: str, teacher_name: str) -> str:
    """ModuleDict key of the adapter for one (student layer, teacher layer) pair, e.g. 'model_17->model_20'."""
    # ModuleDict (add_module) refuses dots in names.
    return f"{student_name}->{teacher_name}".replace(".", "_")


def probe_feature_shapes(model: nn.Module, layer_names: Sequence[str], imgsz: Union[int, tuple[int, int]],
                         device: Optional[Union[str, torch.device]] = None) -> dict[str, torch.Size]:
    """Output shapes {layer: (1, C, H, W)} of one no-grad forward of zeros (1, 3, H, W); model state untouched."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    # Per-module flags, not model.train(flag): a caller may keep some parts (a frozen BN, a teacher) in eval.
    flags = {m: m.training for m in model.modules()}
    model.eval()  # eval: BatchNorm uses, and does not update, its running stats
    try:
        with torch.no_grad(), FeatureRecorder(model, layer_names, detach=True) as recorder:
            model(torch.zeros(1, 3, h, w, device=device, dtype=dtype))
            features = recorder.pop()
    finally:
        for m, flag in flags.items():
            m.training = flag
    return {name: features[name].shape for name in dict.fromkeys(layer_names)}


class FeatureAdapter(nn.Module):
    """Maps a student feature (B, Cs, Hs, Ws) to the teacher's (B, Ct, Ht, Wt).

    Channels: a 1x1 Conv2d(Cs, Ct) with bias when Cs != Ct, identity (no parameters) when equal,
    mmrazor's connector rule of adding parameters only where needed.
    Space: when the pair's strides differ, the adapted student feature is resized to (Ht, Wt) by
    bilinear interpolation (align_corners=False). The student side is resized, never the teacher's,
    so the target stays exactly what the teacher computed; the usual pairs (same FPN level) have
    equal strides, so this path is rare.
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial_scale: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.student_channels, self.teacher_channels = int(student_channels), int(teacher_channels)
        # Teacher size / student size per axis, fixed by the strides, so it holds at any image size.
        self.spatial_scale = (float(spatial_scale[0]), float(spatial_scale[1]))
        if self.student_channels == self.teacher_channels:
            self.proj: nn.Module = nn.Identity()
        else:
            self.proj = nn.Conv2d(self.student_channels, self.teacher_channels, kernel_size=1, bias=True)
            # Variance-preserving for a linear map (no activation follows): the adapted feature starts
            # at the student's own scale, so early distillation losses reflect the student/teacher gap
            # rather than an arbitrary projection gain; zero bias adds no offset to learn away.
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_in", nonlinearity="linear")
            nn.init.zeros_(self.proj.bias)

    def forward(self, s_feat: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(B, Cs, Hs, Ws) -> (B, Ct, Ht, Wt); `size` (Ht, Wt) overrides the stride ratio when given."""
        out = self.proj(s_feat)
        if size is None:
            if self.spatial_scale == (1.0, 1.0):
                return out
            size = (round(s_feat.shape[-2] * self.spatial_scale[0]), round(s_feat.shape[-1] * self.spatial_scale[1]))
        size = tuple(int(v) for v in size)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def extra_repr(self) -> str:
        return f"{self.student_channels}->{self.teacher_channels}, spatial_scale={self.spatial_scale}"


def build_adapters(student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size],
                   pairs: Sequence[tuple[str, str]]) -> nn.ModuleDict:
    """One FeatureAdapter per (student layer, teacher layer) pair, keyed by adapter_key()."""
    adapters = nn.ModuleDict()
    for s_name, t_name in pairs:
        s_shape, t_shape = tuple(student_shapes[s_name]), tuple(teacher_shapes[t_name])
        for who, name, shape in (("student", s_name, s_shape), ("teacher", t_name, t_shape)):
            if len(shape) != 4:
                raise UserError(f"{who} layer {name!r} outputs shape {list(shape)}, not (B, C, H, W): "
                                f"feature distillation needs a convolutional feature map")
        key = adapter_key(s_name, t_name)
        if key not in adapters:  # a repeated pair shares its adapter
            scale = (t_shape[2] / s_shape[2], t_shape[3] / s_shape[3])
            adapters[key] = FeatureAdapter(s_shape[1], t_shape[1], scale)
    return adapters

"""Frozen classifier teachers, alone or as an ensemble, fed from the student's batch.

Each teacher keeps the input size and normalisation it was trained with: the student's normalised
batch is mapped back to [0, 1] pixels, resized and renormalised for each teacher, so teacher and
student see the same augmented crop and one DataLoader serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolodistill.errors import UserError
from .models import load_classifier


def renormalise(x: torch.Tensor, src_mean: Sequence[float], src_std: Sequence[float], imgsz: int,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) normalised with (src_mean, src_std) -> (B, 3, imgsz, imgsz) normalised with (mean, std)."""
    def shape(v):
        return torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    if tuple(src_mean) == tuple(mean) and tuple(src_std) == tuple(std) and x.shape[-1] == x.shape[-2] == imgsz:
        return x
    pixels = x * shape(src_std) + shape(src_mean)
    if pixels.shape[-2:] != (imgsz, imgsz):
        pixels = F.interpolate(pixels, size=(imgsz, imgsz), mode="bilinear", align_corners=False, antialias=True)
    return (pixels - shape(mean)) / shape(std)


def identity_of(paths: Sequence[str | Path], classes: Sequence[str]) -> dict:
    """What a logits store records about the teachers that filled it (compared on reuse)."""
    return {"type": "classifier", "checkpoints": [Path(p).name for p in paths],
            "bytes": [Path(p).stat().st_size for p in paths], "classes": list(classes)}


class ClassifierTeachers(nn.Module):
    """One or more frozen classifiers with the same classes; eval mode and no_grad, whatever the caller does."""

    def __init__(self, paths: Sequence[str | Path], device: torch.device | str = "cpu"):
        super().__init__()
        if not paths:
            raise UserError("no teacher checkpoint given (--t_weights)")
        models, self.metas = [], []
        for p in paths:
            model, meta = load_classifier(p)
            models.append(model.to(device))
            self.metas.append(meta)
        self.members = nn.ModuleList(models)
        self.classes = list(self.metas[0]["classes"])
        for p, meta in zip(paths, self.metas):
            if list(meta["classes"]) != self.classes:
                raise UserError(f"teacher {p} has classes {meta['classes'][:5]}..., teacher {paths[0]} has "
                                f"{self.classes[:5]}...: ensemble members must share their classes")
        self.identity = identity_of(paths, self.classes)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ClassifierTeachers":
        return super().train(False)  # a teacher never updates BatchNorm statistics or applies dropout

    def preprocess(self, i: int, x: torch.Tensor, src_mean, src_std) -> torch.Tensor:
        meta = self.metas[i]
        return renormalise(x, src_mean, src_std, meta["imgsz"], meta["mean"], meta["std"])

    @torch.no_grad()
    def forward(self, x: torch.Tensor, src_mean: Sequence[float], src_std: Sequence[float]) -> torch.Tensor:
        """(B, 3, H, W) student batch -> (B, n_teachers, C) logits."""
        return torch.stack([m(self.preprocess(i, x, src_mean, src_std)).float()
                            for i, m in enumerate(self.members)], dim=1)

"""Classifiers by name (timm models and a few small built-ins) and their plain checkpoints.

A classifier checkpoint holds only tensors and plain values: {"arch", "num_classes", "classes", "imgsz",
"mean", "std", "model" (state_dict), "epoch", "metrics", ...}. It loads with torch's weights-only
loader, so opening one never runs code, and the model is rebuilt from "arch". The last.pt of an unfinished
run also has a "resume" entry (optimizer, scheduler, options: see ClassifyTrainer.resume_state).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from yolodistill.checkpoint import save_checkpoint_atomic
from yolodistill.errors import UserError

LOGGER = logging.getLogger("yolodistill")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "yolodistill-classifier/1"


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear: the Hinton-KD tutorials' students and teachers."""

    def __init__(self, num_classes: int, imgsz: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 3 * imgsz * imgsz
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.feature_info = []  # no convolutional maps: feature distillation needs a CNN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """[Conv3x3-BN-ReLU (stride 2 after the first)] per width, global average pool, Linear."""

    def __init__(self, num_classes: int, widths: Sequence[int]):
        super().__init__()
        blocks, c_in = [], 3
        for i, c in enumerate(widths):
            blocks.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                                        nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
            c_in = c
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)
        # timm's convention, so default feature pairs are found the same way for both kinds of model
        self.feature_info = [{"module": f"stages.{i}", "num_chs": c, "reduction": 2 ** i} for i, c in enumerate(widths)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(x)))


BUILTIN = {
    "mlp_small": lambda n, s: MLP(n, s, (32,)),
    "mlp": lambda n, s: MLP(n, s, (256, 256)),
    "mlp_large": lambda n, s: MLP(n, s, (1024, 1024), dropout=0.2),
    "cnn_small": lambda n, s: SmallCNN(n, (8, 16)),
    "cnn": lambda n, s: SmallCNN(n, (32, 64, 128)),
    "cnn_large": lambda n, s: SmallCNN(n, (64, 128, 256)),
}


def _unknown_model(arch: str) -> UserError:
    import timm

    names = list(BUILTIN) + timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; built-in: {', '.join(BUILTIN)}, or any timm model"
    return UserError(f"unknown model {arch!r}{hint}")


def build_classifier(arch: str, num_classes: int, *, imgsz: int, pretrained: Optional[str] = None) -> nn.Module:
    """A built-in or timm model with `num_classes` outputs; `pretrained` is a local weights file or None."""
    if arch in BUILTIN:
        if pretrained:
            raise UserError(f"--pretrained applies to timm models; {arch!r} is a built-in model")
        return BUILTIN[arch](num_classes, imgsz)
    import timm

    if not timm.is_model(arch):
        raise _unknown_model(arch)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    path = Path(pretrained)
    if not path.is_file():
        raise UserError(f"pretrained weights {path} not found: weights come from local files only "
                        f"(download the timm checkpoint elsewhere and pass its path)")
    # pretrained_cfg_overlay(file=...) makes timm read the local file and never the hub; its loader
    # drops the classifier when num_classes differs from the checkpoint's.
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load {path} into timm model {arch!r}: {str(e).splitlines()[0][:200]}") from None


def default_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model expects: its timm pretrained config (no model built), else ImageNet's."""
    if arch not in BUILTIN:
        from timm.models import get_pretrained_cfg

        if not timm_is_model(arch):
            raise _unknown_model(arch)
        cfg = get_pretrained_cfg(arch)
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def timm_is_model(arch: str) -> bool:
    import timm

    return timm.is_model(arch)


def last_feature_layer(model: nn.Module) -> str:
    """Module name of the model's deepest feature map (timm's feature_info convention)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"{type(model).__name__} declares no convolutional feature layers; "
                        f"name them with --d_layers student_layer:teacher_layer")
    last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
    return last["module"]


def checkpoint_dict(model: nn.Module, *, arch: str, classes: Sequence[str], imgsz: int, mean: Sequence[float],
                    std: Sequence[float], epoch: int = -1, metrics: Optional[dict] = None, **extra: Any) -> dict:
    """The plain, weights-only-loadable checkpoint of a classifier (tensors on the CPU)."""
    from yolodistill.compress.quant import split_state_dict

    num_classes = extra.pop("num_classes", len(classes))
    # A QAT student is saved plain, its INT8 ranges beside the weights (None for every other student).
    state, quant = split_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    if quant is not None:
        extra["quant"] = quant
    return {"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": int(num_classes), "classes": list(classes),
            "imgsz": int(imgsz), "mean": [float(m) for m in mean], "std": [float(s) for s in std], "model": state,
            "epoch": int(epoch), "metrics": dict(metrics or {}), **extra}


def save_classifier(path: str | Path, model: nn.Module, **meta: Any) -> None:
    save_checkpoint_atomic(checkpoint_dict(model, **meta), path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, weights-only; anything else is a one-line UserError."""
    from yolodistill.checkpoint import TRUST_HINT, CheckpointError, load_checkpoint

    p = Path(path)
    if not p.is_file():
        raise UserError(f"classifier checkpoint {p} not found")
    try:  # weights-only, with the loader's one-line reasons (truncated, or which code the pickle would run)
        ckpt = load_checkpoint(p)
    except CheckpointError as e:
        # There is no --trust-checkpoint for classifiers: theirs hold only tensors and plain values.
        raise UserError(str(e).replace(TRUST_HINT, "a yolodistill classifier checkpoint holds only tensors, so "
                                                   "this file is not one")) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{p} is not a yolodistill classifier checkpoint (written by `yolodistill classify train`)")
    return ckpt


def classifier_from_checkpoint(ckpt: dict, *, quantized: bool = True) -> nn.Module:
    """The model of a checkpoint dict, in eval mode; a QAT checkpoint's INT8 fake quantizers are put back
    unless `quantized` is False (its weights are plain either way)."""
    model = build_classifier(ckpt["arch"], ckpt["num_classes"], imgsz=ckpt["imgsz"])
    model.load_state_dict(ckpt["model"])
    if quantized and ckpt.get("quant"):
        from yolodistill.compress.quant import attach_quantizers

        attach_quantizers(model, ckpt["quant"])
    return model.eval()


def load_classifier(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint metadata without the weights)."""
    ckpt = read_checkpoint(path)
    model = classifier_from_checkpoint(ckpt)
    ckpt.pop("model")
    return model, ckpt

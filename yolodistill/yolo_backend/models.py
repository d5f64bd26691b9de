"""YOLOv5 models: building, loading checkpoints weights-only, the Detect head's facts, export copies."""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint, save_checkpoint_atomic
from ..errors import UserError
from ._yolov5 import (LOGGER, YOLOV5_CHECKPOINT_ALIASES, YOLOV5_CHECKPOINT_MODULES, Detect, DetectionModel,
                      de_parallel, intersect_dicts, labels_to_class_weights)
from .files import resolve_model_cfg


def build_model(cfg: str | Path | dict, nc: int, anchors: Any = None) -> nn.Module:
    """A fresh YOLOv5 DetectionModel from a yaml path, a packaged name or a yaml dict."""
    if not isinstance(cfg, dict):
        cfg = str(resolve_model_cfg(cfg))
    try:
        return DetectionModel(cfg, ch=3, nc=nc, anchors=anchors)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        what = cfg if isinstance(cfg, str) else "the yaml"
        raise UserError(f"cannot build a YOLOv5 model from {what}: {e}") from None


def load_yolov5_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """torch.load of a yolov5 or yolodistill checkpoint, weights-only with yolov5's layer classes allowed."""
    return load_checkpoint(path, allowed_prefixes=YOLOV5_CHECKPOINT_MODULES, aliases=YOLOV5_CHECKPOINT_ALIASES,
                           trust=trust)


def load_detection_checkpoint(path: str | Path, *, trust: bool = False) -> dict:
    """Load a YOLOv5 checkpoint safely and check it holds a detection model ('ema' or 'model')."""
    ckpt = load_yolov5_checkpoint(path, trust=trust)
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, DetectionModel):
        what = type(model).__name__ if model is not None else "no 'model' entry"
        raise UserError(f"{path} is not a YOLOv5 detection checkpoint ({what})")
    return ckpt


def checkpoint_model(ckpt: dict) -> nn.Module:
    """The FP32 model of a checkpoint, EMA weights preferred (what yolov5's attempt_load returns, unfused)."""
    model = (ckpt.get("ema") or ckpt["model"]).float()
    if isinstance(getattr(model, "names", None), (list, tuple)):
        model.names = dict(enumerate(model.names))
    for m in model.modules():  # the compatibility fixes attempt_load applies to older checkpoints
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
        if isinstance(m, Detect) and not isinstance(m.anchor_grid, list):
            m.anchor_grid = [torch.zeros(1)] * m.nl
    return model


def load_model(path: str | Path, *, trust: bool = False) -> nn.Module:
    """A YOLOv5 detection model in FP32 from a checkpoint file (yolov5's attempt_load, weights-only)."""
    return checkpoint_model(load_detection_checkpoint(path, trust=trust))


def create_student(weights: str, cfg: str, nc: int, hyp: dict, *, trust: bool = False,
                   exclude_anchors: bool = False) -> tuple[nn.Module, Optional[dict]]:
    """The student as train.py builds it: from a cfg, or a cfg/checkpoint's yaml with matching weights transferred."""
    if weights:
        ckpt = load_detection_checkpoint(weights, trust=trust)
        src = ckpt["model"] if ckpt.get("model") is not None else ckpt["ema"]
        model = build_model(str(resolve_model_cfg(cfg)) if cfg else src.yaml, nc, hyp.get("anchors"))
        exclude = ["anchor"] if (cfg or hyp.get("anchors") or exclude_anchors) else []
        csd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=exclude)
        model.load_state_dict(csd, strict=False)
        LOGGER.info(f"Transferred {len(csd)}/{len(model.state_dict())} items from {weights}")
        return model, ckpt
    if not cfg:
        raise UserError("either --weights or --cfg must be given for the student")
    return build_model(cfg, nc, hyp.get("anchors")), None


def detect_head(model: nn.Module) -> nn.Module:
    """The Detect module (last layer) of a YOLOv5 model."""
    head = de_parallel(model).model[-1]
    if not isinstance(head, Detect):
        raise UserError(f"model's last layer is {type(head).__name__}, not a YOLOv5 Detect head")
    return head


def num_classes(model: nn.Module) -> int:
    """Classes the Detect head predicts (a fresh model has no `.nc` attribute until training sets it)."""
    return int(detect_head(model).nc)


def detect_input_layers(model: nn.Module) -> list[str]:
    """Module names of the layers whose outputs feed Detect (P3, P4, P5 for the standard models)."""
    head = detect_head(model)
    sources = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    n = len(de_parallel(model).model)
    return [f"model.{i % n}" for i in sources]


def head_layout(model: nn.Module) -> dict:
    """What output distillation needs to match between student and teacher."""
    head = detect_head(model)
    return {"nc": int(head.nc), "nl": int(head.nl), "na": int(head.na),
            "anchors": (head.anchors * head.stride.view(-1, 1, 1)).detach().float().cpu(),  # pixels
            "stride": head.stride.detach().float().cpu()}


def copy_anchors(src: nn.Module, dst: nn.Module) -> None:
    """Give `dst`'s Detect head the anchors of `src` (both in grid units for the same strides)."""
    detect_head(dst).anchors.data.copy_(detect_head(src).anchors.to(detect_head(dst).anchors))


def forward_raw(model: nn.Module, imgs: torch.Tensor) -> list[torch.Tensor]:
    """Raw per-level head outputs of a model kept in eval mode, skipping Detect's box decode.

    In eval mode Detect also decodes boxes (sigmoid, grids, concatenation) for NMS; distillation
    compares the raw tensors only. Detect has no BatchNorm or dropout, so flagging just the head
    as training changes its return value and nothing else: the backbone's BN stays in eval.
    """
    head = detect_head(model)
    was_training = head.training
    head.training = True
    try:
        return list(model(imgs))
    finally:
        head.training = was_training


def raw_head_outputs(output: Any) -> list[torch.Tensor]:
    """Per-level raw head tensors (B, A, H, W, 5 + nc): training mode returns them, eval returns (pred, raw)."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
        return output[1]
    return list(output)


def max_stride(model: nn.Module) -> int:
    """Grid size: the largest stride, at least 32 (as train.py)."""
    return max(int(de_parallel(model).stride.max()), 32)


def scaled_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """A copy of `hyp` with the box/cls/obj gains scaled to the detection layers, classes and image size, as
    yolov5's train.py scales them (its gains are tuned for 3 layers, 80 classes and 640 px)."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def prepare_for_loss(model: nn.Module, hyp: dict, nc: int, imgsz: int, names: dict, labels: Sequence[np.ndarray],
                     label_smoothing: float = 0.0) -> dict:
    """Scale hyp gains to layers/classes/image size and attach what ComputeLoss reads, as train.py does."""
    hyp = scaled_loss_gains(hyp, detect_head(model).nl, nc, imgsz)
    hyp["label_smoothing"] = label_smoothing
    m = de_parallel(model)
    m.nc, m.hyp, m.names = nc, hyp, names
    m.class_weights = labels_to_class_weights(list(labels), nc).to(next(m.parameters()).device) * nc
    return hyp


def model_stats(model: nn.Module, imgsz: int) -> dict:
    """Parameters and GFLOPs at imgsz (thop, as yolov5's model_info)."""
    params = sum(p.numel() for p in model.parameters())
    gflops = float("nan")
    try:
        import thop
        stride = max_stride(model)
        p = next(model.parameters())
        im = torch.empty((1, 3, stride, stride), device=p.device, dtype=p.dtype)
        gflops = thop.profile(deepcopy(de_parallel(model)), inputs=(im,), verbose=False)[0] / 1e9 * 2
        gflops *= (imgsz / stride) ** 2
    except Exception as e:  # thop is optional for yolov5 too; the count is informative only
        LOGGER.warning(f"WARNING: GFLOPs not counted ({type(e).__name__}: {e})")
    return {"params": params, "gflops": gflops}


def export_model(model: nn.Module, *, dynamic: bool = False, fuse: bool = True) -> nn.Module:
    """A copy ready to trace, as yolov5's export.py makes it: FP32, eval, Conv+BN fused, and Detect in export
    mode, returning one tensor (B, N, 5 + nc) of decoded boxes (xywh pixels, objectness, class scores)."""
    model = deepcopy(de_parallel(model)).float().eval()
    if fuse:
        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # fuse() prints the model summary
        try:
            model.fuse()
        finally:
            LOGGER.setLevel(level)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.dynamic, m.export = False, dynamic, True
    return model


def export_metadata(model: nn.Module) -> dict:
    """What yolov5's DetectMultiBackend reads back from an ONNX file's metadata: stride and class names."""
    names = de_parallel(model).names
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return {"stride": max_stride(model), "names": names}


def strip_checkpoint(path: Path) -> None:
    """Leave a plain YOLOv5 student: EMA weights as 'model', no optimizer, no adapters (atomic rewrite)."""
    ckpt = load_yolov5_checkpoint(path)
    if ckpt.get("ema") is not None:
        ckpt["model"] = ckpt["ema"]
    for k in ("optimizer", "best_fitness", "ema", "updates"):
        ckpt[k] = None
    ckpt.pop("distill", None)
    ckpt["epoch"] = -1
    ckpt["model"].half()
    for p in ckpt["model"].parameters():
        p.requires_grad = False
    save_checkpoint_atomic(ckpt, path)

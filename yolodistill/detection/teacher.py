"""The frozen teacher: loaded once, never trained, never in train mode, run without gradients."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import yolo_backend as yb
from ..errors import UserError


class FrozenTeacher(nn.Module):
    """Wraps a YOLOv5 model so that it stays in eval mode (BN statistics fixed) and runs under no_grad."""

    def __init__(self, model: nn.Module, *, half: bool = False):
        super().__init__()
        self.model = model.half() if half else model.float()
        self.half = half
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # A parent's .train() must not switch the teacher's BatchNorm to batch statistics.
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level head outputs (B, A, H, W, 5 + nc); FP16 on CUDA when `half`."""
        imgs = imgs.half() if self.half else imgs.float()
        return yb.forward_raw(self.model, imgs)

    @torch.no_grad()
    def pseudo_labels(self, imgs: torch.Tensor, *, conf_thres: float, first_index: int = 0) -> torch.Tensor:
        """The teacher's boxes after NMS as training targets (N, 6): image (first_index + its place in `imgs`),
        class, x, y, w, h normalised to the image, as yolov5's dataloader gives labels."""
        return yb.pseudo_labels(self.model, imgs, conf_thres=conf_thres, first_index=first_index)

    @property
    def num_classes(self) -> int:
        return yb.num_classes(self.model)


def load_teacher(weights: str, *, cfg: str = "", nc: int | None = None, device: torch.device,
                 half: bool = False, trust: bool = False) -> FrozenTeacher:
    """Teacher from its checkpoint; with `cfg`, its weights go into a model built from that yaml."""
    ckpt = yb.load_detection_checkpoint(weights, trust=trust)
    model = yb.checkpoint_model(ckpt)
    if cfg:
        built = yb.build_model(cfg, nc if nc is not None else yb.num_classes(model))
        state = model.state_dict()
        missing = [k for k, v in built.state_dict().items() if k not in state or state[k].shape != v.shape]
        if missing:
            raise UserError(f"teacher weights {weights} do not fit --t_cfg {cfg} "
                               f"({len(missing)} tensors differ, e.g. {missing[0]})")
        built.load_state_dict(state)
        for attr in ("names", "stride"):
            if hasattr(model, attr):
                setattr(built, attr, getattr(model, attr))
        model = built
    if nc is not None and yb.num_classes(model) != nc:
        yb.LOGGER.warning(f"WARNING: teacher {weights} has nc={yb.num_classes(model)}, the dataset nc={nc}")
    return FrozenTeacher(model.to(device), half=half)

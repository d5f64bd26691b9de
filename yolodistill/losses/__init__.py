"""Distillation losses as pure tensor functions: a feature-loss registry and the output (head) loss."""

from .registry import (
    ENTRY_POINT_GROUP,
    FEATURE_LOSSES,
    available_feature_losses,
    build_feature_loss,
    register_feature_loss,
)
# importing registers mse, cwd and pkd
from .feature import ChannelWiseDistillationLoss, MSEFeatureLoss, PearsonFeatureLoss
from .output import OUTPUT_LOSSES, binary_kl, output_distillation_loss

__all__ = [
    "ENTRY_POINT_GROUP",
    "FEATURE_LOSSES",
    "available_feature_losses",
    "build_feature_loss",
    "register_feature_loss",
    "MSEFeatureLoss",
    "ChannelWiseDistillationLoss",
    "PearsonFeatureLoss",
    "output_distillation_loss",
    "OUTPUT_LOSSES",
    "binary_kl",
]

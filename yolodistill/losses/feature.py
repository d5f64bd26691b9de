"""Built-in feature losses: pure functions of (s_feat, t_feat), each one registered class."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .registry import register_feature_loss


def _check_shapes(s_feat: torch.Tensor, t_feat: torch.Tensor) -> None:
    # Broadcasting would silently compare the wrong elements; the adapter must already match shapes.
    if s_feat.shape != t_feat.shape:
        raise ValueError(f"student feature {tuple(s_feat.shape)} does not match teacher feature "
                         f"{tuple(t_feat.shape)}; adapt the student to the teacher's shape first")


@register_feature_loss("mse")
class MSEFeatureLoss(nn.Module):
    """FitNets hint loss (Romero et al. 2015): mean squared error over all elements of (B, C, H, W)."""

    def forward(self, s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        """Scalar mean of (s_feat - t_feat)^2; both (B, C, H, W)."""
        _check_shapes(s_feat, t_feat)
        # float32: fp16 squares of large activations overflow
        return (s_feat.float() - t_feat.detach().float()).pow(2).mean()


@register_feature_loss("cwd")
class ChannelWiseDistillationLoss(nn.Module):
    """Channel-wise distillation (Shu et al. ICCV 2021): KL of per-channel spatial softmaxes, per (B * C)."""

    def __init__(self, tau: float = 1.0):
        super().__init__()
        if not tau > 0:
            raise UserError(f"cwd: tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        """Scalar tau^2 * sum KL(p_T || p_S) / (B * C); softmax over H*W of (B, C, H, W) / tau."""
        _check_shapes(s_feat, t_feat)
        b, c = t_feat.shape[:2]
        # float32: log_softmax of fp16 logits loses the small probabilities the KL is made of
        s_logits = s_feat.float().flatten(2) / self.tau
        t_logits = t_feat.detach().float().flatten(2) / self.tau
        t_log_p = t_logits.log_softmax(-1)
        kl = (t_log_p.exp() * (t_log_p - s_logits.log_softmax(-1))).sum()
        # tau^2 keeps gradient magnitude independent of tau (Hinton et al. 2015)
        return kl * self.tau ** 2 / (b * c)


@register_feature_loss("pkd")
class PearsonFeatureLoss(nn.Module):
    """PKD (Cao et al. NeurIPS 2022): MSE of per-channel standardised features, i.e. 1 - Pearson correlation.

    Standardising each channel (over batch and space) removes the scale gap between a small
    student and a large teacher, so the loss stays in [0, 2] whatever the activation magnitudes.
    """

    def forward(self, s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        """Scalar mean((z(s) - z(t))^2) / 2, z standardising each channel of (B, C, H, W) over B, H, W."""
        _check_shapes(s_feat, t_feat)
        return (_standardise(s_feat.float()) - _standardise(t_feat.detach().float())).pow(2).mean() / 2


def _standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    # Population statistics (unbiased=False): repeating the batch leaves the loss unchanged.
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False).add(eps).sqrt()
    return (x - mean) / std

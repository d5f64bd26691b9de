"""Classification distillation losses, as pure tensor functions.

Hinton et al. (2015): total = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y), with
p = softmax(logits / T). T^2 keeps the soft term's gradients on the scale of the hard term's as T
grows. torch's KLDivLoss takes the student's *log*-probabilities as input and the teacher's
probabilities as target; feeding it probabilities (as some tutorials do) computes something else.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .data import UNLABELED


def soft_targets(teacher_logits: Union[torch.Tensor, Sequence[torch.Tensor]], temperature: float) -> torch.Tensor:
    """Teacher probabilities at temperature T, (B, C); an ensemble averages its members' softened probabilities."""
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = [teacher_logits]
    probs = [F.softmax(t.float() / temperature, dim=1) for t in teacher_logits]
    return torch.stack(probs).mean(0)


def kd_kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student / T)), mean over the batch; teacher_probs (B, C) at T."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_student, teacher_probs, reduction="batchmean") * temperature ** 2


def labeled_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled rows only (unlabeled ones carry label -1); 0 for a batch without labels."""
    labeled = labels != UNLABELED
    return (F.cross_entropy(student_logits[labeled].float(), labels[labeled]) if labeled.any()
            else student_logits.sum() * 0.0)


def hinton_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, *,
                temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha * soft term, (1 - alpha) * hard term); unlabeled rows (label -1) get only the soft term."""
    soft = alpha * kd_kl_loss(student_logits, teacher_probs, temperature)
    return soft, (1 - alpha) * labeled_cross_entropy(student_logits, labels)


def embedding_mse(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (B, D) embeddings, each L2-normalised first (CLIP compares directions)."""
    return F.mse_loss(F.normalize(student_emb.float(), dim=1), F.normalize(teacher_emb.float(), dim=1))


def embedding_cosine(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, mean over the batch, (B, D) each."""
    return (1 - F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=1)).mean()

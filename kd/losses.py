"""Distillation losses on logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, summed over classes and averaged over the batch
    (``batchmean``; Hinton et al. 2015, the form RepDistiller and Fast-Datafree compute)."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * (T * T)

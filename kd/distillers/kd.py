"""Hinton KD and the no-KD baseline.

``kd`` (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015):
``r * CE(s, y) + a * KL(softmax(t/T) || softmax(s/T)) * T^2``, the KL summed over classes and
divided by the batch size (RepDistiller ``distiller_zoo/KD.py``).
Defaults are RepDistiller's CIFAR-100 script: ``-r 0.1 -a 0.9``, ``--kd_T 4``. Unlabelled
batches (data-free KD) get the KL term only: the data-free loop's loss with ``a = 1``.
``logit_loss="l1"`` (Python only, for the data-free loop) makes the ``kd`` term the mean absolute
difference of the logits instead, DFAD's student loss (Fang et al. 2019, Eq. 4).

``nokd`` (Distiller's NOKD row): the student trained with CE alone
under the KD recipe; no teacher forward is run.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers.base import DataInfo, Distiller, Weights
from kd.distillers.registry import register_distiller


@register_distiller("kd")
class KD(Distiller):
    weights = Weights(r=0.1, a=0.9, b=0.0)
    LOGIT_LOSSES = ("kl", "l1")

    def __init__(self, student: nn.Module, teacher: nn.Module, data: Optional[DataInfo] = None, T: float = 4.0,
                 weights: Optional[Weights] = None, logit_loss: str = "kl", **kw):
        if logit_loss not in self.LOGIT_LOSSES:
            raise ValueError(f"logit_loss must be one of {', '.join(self.LOGIT_LOSSES)}; got {logit_loss!r}")
        super().__init__(student, teacher, data or DataInfo(num_classes=0), T, weights, **kw)
        self.logit_loss = logit_loss

    def kd_term(self, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        if self.logit_loss == "l1":
            return F.l1_loss(s_logits.float(), t_logits.float())
        return super().kd_term(s_logits, t_logits)


@register_distiller("nokd", "student", "vanilla")
class NoKD(Distiller):
    weights = Weights(r=1.0, a=0.0, b=0.0)
    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module] = None, data: Optional[DataInfo] = None,
                 T: float = 4.0, weights: Optional[Weights] = None, **kw):
        super().__init__(student, None, data or DataInfo(num_classes=0), T, weights, **kw)

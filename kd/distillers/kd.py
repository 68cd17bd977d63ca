"""Hinton KD (Hinton et al., 2015): ``gamma * CE(s, y) + alpha * KL(p_t || p_s) * T^2``.

Defaults are RepDistiller's (``-r 0.1 -a 0.9``, T 4; reference-notes §3.1), KL summed over
classes and averaged over the batch. Unlabelled batches (data-free KD) get the KL term only,
which is the data-free loop's loss with ``alpha = 1`` and T = ``--T`` (Fast-Datafree).
The teacher is frozen and always in eval mode.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.objective import Objective
from kd.losses import kd_kl_div


class KD(Objective):
    def __init__(self, student: nn.Module, teacher: nn.Module, T: float = 4.0, alpha: float = 0.9,
                 gamma: float = 0.1):
        super().__init__(student)
        self.teacher, self.T, self.alpha, self.gamma = teacher, T, alpha, gamma

    def frozen_modules(self) -> Iterable[nn.Module]:
        return (self.teacher,)

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        labelled = isinstance(batch, (list, tuple))
        x = batch[0] if labelled else batch
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        losses = {"kd": self.alpha * kd_kl_div(s, t, self.T)}
        if labelled and self.gamma > 0:
            losses["ce"] = self.gamma * F.cross_entropy(s, batch[1])
        return losses

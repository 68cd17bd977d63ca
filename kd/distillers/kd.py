"""Hinton KD and the no-KD baseline.

``kd`` (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015):
``r * CE(s, y) + a * KL(softmax(t/T) || softmax(s/T)) * T^2``, the KL summed over classes and
divided by the batch size (RepDistiller ``distiller_zoo/KD.py``; reference-notes §3.1).
Defaults are RepDistiller's CIFAR-100 script: ``-r 0.1 -a 0.9``, ``--kd_T 4``. Unlabelled
batches (data-free KD) get the KL term only: the data-free loop's loss with ``a = 1``.

``nokd`` (Distiller's NOKD row, reference-notes §3.27): the student trained with CE alone
under the KD recipe; no teacher forward is run.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from kd.distillers.base import DataInfo, Distiller, Weights
from kd.distillers.registry import register_distiller


@register_distiller("kd")
class KD(Distiller):
    weights = Weights(r=0.1, a=0.9, b=0.0)

    def __init__(self, student: nn.Module, teacher: nn.Module, data: Optional[DataInfo] = None, T: float = 4.0,
                 weights: Optional[Weights] = None, **kw):
        super().__init__(student, teacher, data or DataInfo(num_classes=0), T, weights, **kw)


@register_distiller("nokd", "student", "vanilla")
class NoKD(Distiller):
    weights = Weights(r=1.0, a=0.0, b=0.0)
    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module] = None, data: Optional[DataInfo] = None,
                 T: float = 4.0, weights: Optional[Weights] = None, **kw):
        super().__init__(student, None, data or DataInfo(num_classes=0), T, weights, **kw)

"""What the trainer optimises.

An :class:`Objective` maps one batch to a dict of named loss tensors; the trainer weights
each by :meth:`Objective.loss_weight` (1 by default), sums them, back-propagates and steps.
It also declares which modules the optimiser trains (the student plus any extra heads a
method needs) and which stay frozen (a teacher, kept in eval mode). The trainer knows nothing else about a method.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class Objective(nn.Module):
    """Base class. Subclasses implement ``forward(batch) -> {name: loss}``.

    ``student`` is the model evaluated on the test set and saved as ``model`` in checkpoints.
    Extra trainable modules are returned by :meth:`extra_modules`; frozen ones by
    :meth:`frozen_modules` (they get ``requires_grad_(False)`` and always stay in eval mode).
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {}

    def frozen_modules(self) -> Iterable[nn.Module]:
        return ()

    def trainable_modules(self) -> Dict[str, nn.Module]:
        return {"student": self.student, **self.extra_modules()}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        seen = set()
        for m in self.trainable_modules().values():
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def loss_weight(self, name: str) -> float:
        """Weight the trainer gives the loss called ``name`` (1 unless a subclass says
        otherwise; distillers map ``ce``/``kd``/method losses to ``-r``/``-a``/``-b``)."""
        return 1.0

    def freeze(self) -> "Objective":
        for m in self.frozen_modules():
            m.requires_grad_(False)
            m.eval()
        return self

    def train(self, mode: bool = True) -> "Objective":
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self


class CrossEntropyObjective(Objective):
    """Plain supervised training: cross-entropy on labelled batches ``(x, y)``.

    Used to train teachers from scratch and the "student alone" baseline.
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__(model)
        self.label_smoothing = label_smoothing

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        return {"ce": F.cross_entropy(self.student(x), y, label_smoothing=self.label_smoothing)}

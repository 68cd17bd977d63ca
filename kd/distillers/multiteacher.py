"""Multi-teacher KD: the student distilled from the average of the KL to several teachers
(karanchahal/distiller ``trainer.py::MultiTrainer``, what its ``test_multikd`` runs and its "MKD"
row reports). The code form is registered as ``multiteacher``, keeping ``multikd`` for the
README's "ensemble of students".

    (1 - lambda) * CE(s, y) + lambda * T^2 * mean_k KL(softmax(t_k / T) || softmax(s / T))

The KL of each teacher is summed over classes and divided by the batch size (the reference's
``KLDivLoss(size_average=False) / batch_size``). The first teacher is the run's teacher; the
others come from ``--extra_teachers arch=checkpoint ...`` (registered architectures, weights
loaded strictly with ``engine.checkpoint.load_weights``; every entry is checked when the method
is built). All teachers are frozen and stay in eval mode. Losses: ``ce`` (``-r``) and ``kd``, the
mean over teachers of ``T^2 KL`` (``-a``). Defaults: Distiller's lambda 0.5 (``-r 0.5 -a 0.5``)
under its recipe, RepDistiller's KD weights (``-r 0.1 -a 0.9``) otherwise.

Deviation: the reference hard-codes its second teacher (WRN22-4 from
``pretrained/WRN22_4_cifar10.pth``, plus a resnet18 it loads and never uses); here the extra
teachers are whatever ``--extra_teachers`` names (none: plain KD).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.checkpoint import load_weights
from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller
from kd.losses import kd_kl_div
from registry.models import canonical_name, get_model


def multi_teacher_kd(s_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor], T: float) -> torch.Tensor:
    """Mean over the teachers of ``T^2 KL(softmax(t_k / T) || softmax(s / T))`` (batchmean)."""
    return torch.stack([kd_kl_div(s_logits, t, T) for t in teacher_logits]).mean()


def parse_teacher_spec(spec: str) -> Tuple[str, str]:
    """``"arch=path"`` -> ``(canonical arch, path)``, with a clear error for a bad entry."""
    arch, sep, path = spec.partition("=")
    if not sep or not arch or not path:
        raise ValueError(f"multiteacher: --extra_teachers entry {spec!r} is not ARCH=CHECKPOINT, "
                         "e.g. wrn22_4=pretrained/wrn22_4.pth")
    try:
        arch = canonical_name(arch)
    except KeyError as e:
        raise ValueError(f"multiteacher: --extra_teachers entry {spec!r}: {e.args[0]}") from None
    if not os.path.isfile(path):
        raise ValueError(f"multiteacher: --extra_teachers entry {spec!r}: no checkpoint file at {path!r}")
    return arch, path


@register_distiller("multiteacher")
class MultiTeacher(Distiller):
    weights = Weights(r=0.1, a=0.9, b=0.0)
    weights_distiller = Weights(r=0.5, a=0.5, b=0.0)

    @dataclass
    class Options:
        extra_teachers: Tuple[str, ...] = option((), "multiteacher: teachers besides --teacher, as "
                                                     "ARCH=CHECKPOINT entries")

    def setup(self) -> None:
        specs = [parse_teacher_spec(s) for s in self.opts.extra_teachers]
        p = next(self.teacher.parameters(), None)
        extra: List[nn.Module] = []
        for arch, path in specs:
            net = get_model(arch, num_classes=self.data.num_classes, in_chans=self.data.in_chans)
            load_weights(net, path)
            net.requires_grad_(False).eval()
            extra.append(net.to(p.device) if p is not None else net)
        self.extra_teachers = nn.ModuleList(extra)

    def frozen_modules(self) -> Iterable[nn.Module]:
        return (self.teacher, *self.extra_teachers)

    def base_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        losses: Dict[str, torch.Tensor] = {}
        if out.y is not None and self.w.r:
            losses["ce"] = F.cross_entropy(out.s_logits, out.y)
        if self.w.a:
            with torch.no_grad():
                extra = [net(out.x) for net in self.extra_teachers]
            losses["kd"] = multi_teacher_kd(out.s_logits, [out.t_logits, *extra], self.T)
        return losses

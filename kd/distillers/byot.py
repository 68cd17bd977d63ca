"""BYOT: Be Your Own Teacher (Zhang et al., "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation", ICCV 2019, Sec. 3 losses 1-3; unofficial
reference luanyunteng/pytorch-be-your-own-teacher ``train.py`` and ``models/resnet.py``).

Self-distillation, no teacher. Side branches are attached to the student at its ``stages`` taps:
one branch after every stage but the last, each ending in its own classifier; the deepest
classifier is the student's own output ``z_N`` and its pooled feature ``f_N`` (the ``pool`` tap).
With branch logits ``z_i`` and branch features ``f_i`` (i < N):

    (1 - alpha) * sum_{i<=N} CE(z_i, y)
  + alpha * T^2 * sum_{i<N} softCE(z_i / T, sg(softmax(z_N / T)))
  + beta * sum_{i<N} || (f_i - sg(f_N))^2 * 1(f_i > 0 or f_N > 0) ||_1

where softCE(a, q) = -mean_b sum_c q log softmax(a) (a cross-entropy against the soft target,
as the reference's ``kd_loss_function``, not a KL) and the feature term is a sum over the batch
and the feature dimensions (the reference's ``feature_loss_function``, no averaging; beta is
small to match). ``f_i`` is the globally pooled branch output before its classifier and
``f_N`` the student's pooled feature: both are vectors of the pooled feature's width (the
reference compares the pooled bottleneck output with the pooled last stage, both 512*expansion
channels).

Branch design. The paper's own branch design is unknown (no official code). Ours follows the shape of the unofficial reference's ``branchBottleNeck``: a 1x1 conv
to ``C/4`` channels, a ``k x k`` conv with stride ``k`` (``k`` = the ratio of the stage's
spatial size to the last stage's, per axis; 1 when they agree), a 1x1 conv to ``C`` channels,
each followed by BatchNorm and ReLU, with ``C`` the width of the student's pooled feature (the
last stage's channel count for ResNets); then global average pooling and a Linear classifier.
Convolutions have no bias (BatchNorm follows) and Kaiming fan-out init, as the reference model.

Defaults: ``--byot_alpha 0.1``, ``--byot_T 3``, ``--byot_beta 1e-6`` (the reference's
``train.py``). The reference's temperature flag is an ``int`` (a trap: it cannot take 2.5);
here it is a float. Loss names and weights: ``ce`` (deepest) and ``ce_branch1``, ... are
pre-multiplied by ``(1 - alpha)`` and weighted by ``-r`` (default 1); ``byot_kd_branchK``
(pre-multiplied by ``alpha * T^2``) and ``byot_feat_branchK`` (pre-multiplied by ``beta``) are
weighted by ``-b`` (default 1). So ``-r 1 -b 1`` is the reference's total loss. ``--kd_T`` is not
read (BYOT has its own ``--byot_T``). ``eval_heads`` reports ``student`` (the deepest classifier,
the run's ``top1``) and ``branch1``, ... (shallowest first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers.base import Distiller, Weights, option
from kd.distillers.registry import register_distiller


def byot_kd_loss(branch_logits: torch.Tensor, deep_logits: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * softCE(z_i / T, sg(softmax(z_N / T)))``, the soft cross-entropy averaged over the batch."""
    target = F.softmax(deep_logits.detach() / T, dim=1)
    return -(target * F.log_softmax(branch_logits / T, dim=1)).sum(1).mean() * (T * T)


def byot_feature_loss(f_branch: torch.Tensor, f_deep: torch.Tensor) -> torch.Tensor:
    """``sum((f_i - sg(f_N))^2 * 1(f_i > 0 or f_N > 0))`` over the batch and the features."""
    f_deep = f_deep.detach()
    active = ((f_branch > 0) | (f_deep > 0)).to(f_branch.dtype)
    return ((f_branch - f_deep).pow(2) * active).sum()


def byot_losses(deep_logits: torch.Tensor, deep_feat: torch.Tensor, branch_logits: Sequence[torch.Tensor],
                branch_feats: Sequence[torch.Tensor], y: Optional[torch.Tensor], alpha: float, T: float,
                beta: float, with_ce: bool = True, with_self: bool = True) -> Dict[str, torch.Tensor]:
    """BYOT's named losses, each pre-multiplied by its BYOT coefficient (see the module docstring)."""
    losses: Dict[str, torch.Tensor] = {}
    if with_ce and y is not None:
        losses["ce"] = (1.0 - alpha) * F.cross_entropy(deep_logits, y)
        for i, z in enumerate(branch_logits, 1):
            losses[f"ce_branch{i}"] = (1.0 - alpha) * F.cross_entropy(z, y)
    if with_self:
        for i, (z, f) in enumerate(zip(branch_logits, branch_feats), 1):
            losses[f"byot_kd_branch{i}"] = alpha * byot_kd_loss(z, deep_logits, T)
            losses[f"byot_feat_branch{i}"] = beta * byot_feature_loss(f, deep_feat)
    return losses


class Branch(nn.Module):
    """A side classifier: bottleneck (reduce, strided conv, expand) + global pool + Linear."""

    def __init__(self, in_channels: int, out_channels: int, stride: Tuple[int, int], num_classes: int):
        super().__init__()
        mid = max(out_channels // 4, 1)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=stride, stride=stride, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled feature (before the classifier)."""
        feat = self.bottleneck(f).mean((2, 3))
        return self.fc(feat), feat


@register_distiller("byot")
class BYOT(Distiller):
    taps = ("stages", "pool")
    weights = Weights(r=1.0, a=0.0, b=1.0)
    needs_teacher = False

    @dataclass
    class Options:
        byot_alpha: float = option(0.1, "BYOT: weight alpha of the self-distillation KL (CE gets 1 - alpha)")
        byot_T: float = option(3.0, "BYOT: temperature of the self-distillation term")
        byot_beta: float = option(1e-6, "BYOT: weight beta of the feature (hint) term")

    def setup(self) -> None:
        stages = self.s_shape("stages")
        if len(stages) < 2:
            raise ValueError(f"byot needs a student with at least 2 stages; it has {len(stages)}")
        width = self.s_shape("pool")[0][1:].numel()
        last_h, last_w = stages[-1][2], stages[-1][3]
        p = next(self.student.parameters(), None)
        self.branches = nn.ModuleList([
            Branch(s[1], width, (max(1, s[2] // last_h), max(1, s[3] // last_w)), self.data.num_classes)
            for s in stages[:-1]])
        if p is not None:
            self.branches.to(p.device)

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {f"branch{i}": b for i, b in enumerate(self.branches, 1)}

    def heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """Deepest logits and feature, then every branch's logits and feature (shallowest first)."""
        logits, feats = self.student_forward(x)
        stage_feats = [feats[n] for n in self.s_groups["stages"]][:-1]
        deep_feat = feats[self.s_groups["pool"][0]].flatten(1)
        outs = [branch(f) for branch, f in zip(self.branches, stage_feats)]
        return logits, deep_feat, [o[0] for o in outs], [o[1] for o in outs]

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        x, y, _ = self.unpack(batch)
        logits, deep_feat, b_logits, b_feats = self.heads(x)
        o = self.opts
        return byot_losses(logits, deep_feat, b_logits, b_feats, y, o.byot_alpha, float(o.byot_T), o.byot_beta,
                           with_ce=bool(self.w.r), with_self=bool(self.w.b))

    def eval_heads(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits, _, b_logits, _ = self.heads(x)
        return {"student": logits, **{f"branch{i}": z for i, z in enumerate(b_logits, 1)}}

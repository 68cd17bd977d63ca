"""FSP: flow-of-solution-procedure matrices (Yim et al., "A Gift from Knowledge Distillation:
Fast Optimization, Network Minimization and Transfer Learning", CVPR 2017, Eq. 1-2; RepDistiller
``distiller_zoo/FSP.py`` and ``helper/pretrain.py::init``).

For consecutive maps of RD's ``feat[:-1]`` = [stem, stage1..N] (tap groups ``stem`` +
``stages``, post-activation), the FSP matrix of a pair (F_i, F_{i+1}) is

    G_i[b, c, d] = mean over positions (h, w) of F_i[b, c, h, w] * F_{i+1}[b, d, h, w],

i.e. ``F_i^T F_{i+1} / (H W)``, after adaptive-average-pooling the larger map to the smaller
one's size. The loss is ``sum_i mean((G_i^s - G_i^t)^2)``. The matrices need equal channel
counts in student and teacher at every map: a mismatch raises a ``ValueError`` when the
distiller is built (RD raises too, which is why wrn_40_2 -> wrn_40_1 is N/A in its table).

Two stages, as RepDistiller runs it:

* **init stage** (``--init_epochs``, 30 in RD): the student's feature modules (all but its
  classifier, RD's ``get_feat_modules()``) are trained on the FSP loss alone (unweighted, as
  RD's ``init``), at the main lr with no schedule;
* **main stage**: ``r * CE (+ a * KD)`` only. The distiller has **no loss of its own** here
  (RD's ``loss_kd = 0`` for ``fsp``), so ``-b`` has no effect.

Defaults: RD ``scripts/run_cifar_distill.sh`` ``--distill fsp -r 1 -a 0 -b 50``. Deviations:
the teacher is not run in the main stage when ``-a`` is 0 (RD runs it and discards its
output); pooling goes to the smaller map's (H, W) (RD pools to a square of its height: the
same for square maps).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from kd.distillers._modules import student_feature_modules
from kd.distillers.base import Distiller, InitStage, StageObjective, Weights
from kd.distillers.registry import register_distiller

FSP_GROUPS = ("stem", "stages")  # RD's feat[:-1]


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``B x C_bottom x C_top`` FSP matrix of two maps (the larger pooled to the smaller)."""
    if bottom.shape[2:] != top.shape[2:]:
        if bottom.shape[2] > top.shape[2]:
            bottom = F.adaptive_avg_pool2d(bottom, top.shape[2:])
        else:
            top = F.adaptive_avg_pool2d(top, bottom.shape[2:])
    positions = bottom.shape[2] * bottom.shape[3]
    return torch.bmm(bottom.flatten(2), top.flatten(2).transpose(1, 2)) / positions


def fsp_matrices(feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """FSP matrices of every consecutive pair of ``feats``."""
    return [fsp_matrix(a, b) for a, b in zip(feats[:-1], feats[1:])]


def fsp_loss(feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i mean((G_i^s - G_i^t)^2)`` over the consecutive pairs."""
    pairs = zip(fsp_matrices(feats_s), fsp_matrices(feats_t))
    return sum((g_s - g_t).pow(2).mean() for g_s, g_t in pairs)


def check_fsp_channels(s_channels: Sequence[int], t_channels: Sequence[int]) -> None:
    """Raise a ``ValueError`` unless student and teacher maps pair one to one with equal channels."""
    if list(s_channels) != list(t_channels):
        raise ValueError(
            f"fsp: the student's feature channels {list(s_channels)} differ from the teacher's "
            f"{list(t_channels)} (stem, stage1..N); FSP matrices need equal channel counts at every map "
            "(RepDistiller raises too: e.g. wrn40_2 -> wrn40_1 is N/A)")


@register_distiller("fsp")
class FSP(Distiller):
    taps = FSP_GROUPS
    weights = Weights(r=1.0, a=0.0, b=50.0)

    def setup(self) -> None:
        check_fsp_channels([s[1] for g in FSP_GROUPS for s in self.s_shape(g)],
                           [t[1] for g in FSP_GROUPS for t in self.t_shape(g)])

    def has_main_loss(self) -> bool:
        return False  # the FSP loss lives in the init stage

    def init_loss(self, batch) -> Dict[str, torch.Tensor]:
        """The init stage's objective on one batch: ``{"fsp": fsp_loss}``."""
        x = self.unpack(batch)[0]
        _, t_feats = Distiller.teacher_forward(self, x)
        _, s_feats = self.student_forward(x)
        f_s = [s_feats[n] for g in FSP_GROUPS for n in self.s_groups[g]]
        f_t = [t_feats[n] for g in FSP_GROUPS for n in self.t_groups[g]]
        return {"fsp": fsp_loss(f_s, f_t)}

    def init_stage(self, epochs: int) -> Optional[InitStage]:
        modules = {"student_features": student_feature_modules(self.student)}
        return InitStage("fsp_init", StageObjective(self.student, self.teacher, modules, self.init_loss), epochs)

    def describe(self) -> str:
        return (super().describe() + " [two stages as RD: init = FSP loss on the student's feature modules; "
                "main = r*CE + a*KD only, -b unused]")

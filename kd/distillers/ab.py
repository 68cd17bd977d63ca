"""AB: activation-boundary transfer (Heo et al., "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons", AAAI 2019, Eq. 5-7, the piecewise "alternative
L2" form of the hinge; RepDistiller ``distiller_zoo/AB.py``, ``models/util.py::Connector``,
``helper/pretrain.py::init``).

Two stages, as RepDistiller runs it:

* **init stage** (``--init_epochs``, 30 in RD): on the *pre-activation* stage outputs of both
  nets (tap group ``preacts``, RD's ``feat[1:-1]`` with ``preact=True``), a connector maps each
  student map to the teacher's shape (:class:`ConvReg` without ReLU where channels or height
  differ, identity where both match) and the margin loss

      L = sum_i w_i * sum_elements[(s + m)^2 * 1(s > -m and t <= 0) + (s - m)^2 * 1(s <= m and t > 0)]
          / B * 3 / 1000,     w_i = 2^(i - n + 1) (i = 0..n-1, the deepest stage weighs 1),

  with margin m = 1 (``--ab_margin``), is minimised (unweighted, as RD's ``init``) over the
  connector and the student's feature modules (all of the student but its classifier, RD's
  ``get_feat_modules()``; the loss only reaches the layers below the taps anyway). The main lr
  is used, with no schedule.
* **main stage**: ``r * CE (+ a * KD)`` only. The distiller has **no loss of its own** here
  (RD's ``loss_kd = 0`` for ``abound``), so ``-b`` has no effect; the connector is kept (saved
  in checkpoints) but frozen in eval mode, as in RD where it sits in ``module_list`` but not in
  ``trainable_list``.

Defaults: RD ``scripts/run_cifar_distill.sh`` ``--distill abound -r 1 -a 0 -b 1``. Deviations:
the teacher is not run in the main stage when ``-a`` is 0 (RD runs it and discards its
output); a differing number of stages raises a ``ValueError`` (RD asserts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from kd.distillers._modules import ConvReg, student_feature_modules
from kd.distillers.base import Distiller, InitStage, StageObjective, Weights, option
from kd.distillers.registry import register_distiller


# ------------------------------------------------------------------ shared with fsp.py / hint.py
# ------------------------------------------------------------------------------------ the loss
def ab_margin_terms(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Sum over all elements of the piecewise margin loss of one (connected) student map
    ``source`` against the teacher's pre-activation map ``target`` (summed in float32)."""
    source = source.float()
    pos = target > 0
    below = ((source > -margin) & ~pos).to(source.dtype)  # teacher inactive, student not far enough below
    above = ((source <= margin) & pos).to(source.dtype)  # teacher active, student not far enough above
    return ((source + margin).pow(2) * below + (source - margin).pow(2) * above).sum()


def ab_layer_weights(n: int) -> List[float]:
    """``2^(i - n + 1)`` for i = 0..n-1: halves for every stage below the deepest."""
    return [2.0 ** (i - n + 1) for i in range(n)]


def ab_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], margin: float = 1.0) -> torch.Tensor:
    """RD's AB init loss summed over the stages: layer-weighted margin terms, / B, x 3/1000."""
    if len(g_s) != len(g_t):
        raise ValueError(f"AB: {len(g_s)} student maps against {len(g_t)} teacher maps")
    batch = g_s[0].shape[0]
    weights = ab_layer_weights(len(g_s))
    return sum(w * ab_margin_terms(s, t, margin) for w, s, t in zip(weights, g_s, g_t)) / batch * 3.0 / 1000.0


class Connector(nn.Module):
    """Per stage: identity where the student map already has the teacher's channels and height,
    else a :class:`ConvReg` without ReLU (RD ``models/util.py::Connector``)."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]):
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(f"AB: the student has {len(s_shapes)} stages and the teacher {len(t_shapes)}; "
                             "AB pairs every stage, so both need the same number")
        self.maps = nn.ModuleList([
            nn.Identity() if (s[1], s[2]) == (t[1], t[2]) else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


# ------------------------------------------------------------------------------- the distiller
@register_distiller("ab", "abound")
class ActivationBoundaries(Distiller):
    taps = ("preacts",)
    weights = Weights(r=1.0, a=0.0, b=1.0)

    @dataclass
    class Options:
        ab_margin: float = option(1.0, "AB: margin m of the init-stage boundary loss")

    def setup(self) -> None:
        self.connector = Connector(self.s_shape("preacts"), self.t_shape("preacts"))

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"connector": self.connector}

    def frozen_modules(self) -> Iterable[nn.Module]:
        return (*super().frozen_modules(), self.connector)

    def has_main_loss(self) -> bool:
        return False  # the AB loss lives in the init stage

    def init_loss(self, batch) -> Dict[str, torch.Tensor]:
        """The init stage's objective on one batch: ``{"ab": ab_loss}``."""
        x = self.unpack(batch)[0]
        _, t_feats = Distiller.teacher_forward(self, x)
        _, s_feats = self.student_forward(x)
        g_s = self.connector([s_feats[n] for n in self.s_groups["preacts"]])
        g_t = [t_feats[n] for n in self.t_groups["preacts"]]
        return {"ab": ab_loss(g_s, g_t, self.opts.ab_margin)}

    def init_stage(self, epochs: int) -> Optional[InitStage]:
        modules = {"connector": self.connector, "student_features": student_feature_modules(self.student)}
        for m in modules.values():
            m.requires_grad_(True)
        return InitStage("ab_init", StageObjective(self.student, self.teacher, modules, self.init_loss), epochs)

    def describe(self) -> str:
        return (super().describe() + " [two stages as RD: init = AB boundary loss on pre-activations "
                "(connector + student features); main = r*CE + a*KD only, -b unused]")

"""FitNet / hint (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, Eq. 3 and
the two-stage training of its section 2.3; RepDistiller ``distiller_zoo/FitNet.py``
(``HintLoss``), ``models/util.py::ConvReg``).

The hint loss is ``MSE(ConvReg(f_s), f_t)`` (mean over all elements) between the student's and
the teacher's feature number ``--hint_layer`` (default 2) of RD's list ``feat`` = [stem,
stage1..N, pool] (tap group ``feat``, post-activation). ``ConvReg`` (trainable, saved in
checkpoints) maps the student map to the teacher's shape: stride-2 conv, stride-2 transposed
conv or a valid conv, then BatchNorm and ReLU. A pooled (2-D) feature is treated as a 1x1 map.

Two forms (``--hint_stages``):

* ``1`` (**default**, RD / MD single stage; RD ``scripts/run_cifar_distill.sh`` ``--distill
  hint -r 1 -a 0 -b 100``): one stage of ``r * CE + a * KD + b * hint``.
* ``2`` (the paper's): an init stage (``--init_epochs``, main lr, no schedule) trains the
  student's layers up to the hint layer plus the regressor on the hint loss alone (unweighted);
  it is given the student's feature modules, but the hint loss only reaches the layers below
  the tap, so only those change (the BatchNorm running statistics of the layers above still
  follow the forward pass). The main stage then runs ``r * CE + a * KD`` without the hint
  term (the paper uses KD here: pass e.g. ``-r 0.1 -a 0.9``); the regressor is kept, frozen.
  With ``--init_epochs 0`` this form has no hint at all.

Deviation: in the two-stage form's main stage the teacher is not run when ``-a`` is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers._modules import ConvReg
from kd.distillers._modules import student_feature_modules
from kd.distillers.base import Distiller, InitStage, Outputs, StageObjective, Weights, option
from kd.distillers.registry import register_distiller

HINT_FORMS = {1: "RD single stage (r*CE + a*KD + b*hint)",
              2: "paper two stages (init: hint only on the lower student + regressor; main: r*CE + a*KD, no hint)"}


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A feature as a 4-D map (a pooled ``B x C`` vector becomes ``B x C x 1 x 1``)."""
    return f if f.dim() == 4 else f.reshape(f.shape[0], -1, 1, 1)


def hint_loss(g_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``MSE(g_s, f_t)``, mean over every element; ``g_s`` is the regressed student map."""
    return F.mse_loss(g_s, f_t)


@register_distiller("hint", "fitnet")
class FitNet(Distiller):
    taps = ("feat",)
    weights = Weights(r=1.0, a=0.0, b=100.0)

    @dataclass
    class Options:
        hint_layer: int = option(2, "FitNet: index of the hinted feature in feat = [stem, stage1..N, pool] (RD: 0..4)")
        hint_stages: int = option(1, "FitNet: 1 = RD's single stage CE + b*hint; 2 = the paper's init stage on the "
                                     "hint, then KD/CE without it")

    def setup(self) -> None:
        k, n_s, n_t = self.opts.hint_layer, len(self.s_groups["feat"]), len(self.t_groups["feat"])
        if not (0 <= k < min(n_s, n_t)):
            raise ValueError(f"hint: --hint_layer {k} is outside feat = [stem, stage1..N, pool] "
                             f"(0..{min(n_s, n_t) - 1} for these models)")
        if self.opts.hint_stages not in HINT_FORMS:
            raise ValueError(f"hint: --hint_stages {self.opts.hint_stages}: use 1 (RD single stage) or 2 (the paper's)")
        s_shape, t_shape = self.s_shape("feat")[k], self.t_shape("feat")[k]
        as_4d = lambda s: tuple(s) if len(s) == 4 else (s[0], s[1], 1, 1)  # noqa: E731
        self.regressor = ConvReg(as_4d(s_shape), as_4d(t_shape))

    @property
    def two_stage(self) -> bool:
        return self.opts.hint_stages == 2

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"regressor": self.regressor}

    def frozen_modules(self) -> Iterable[nn.Module]:
        frozen = tuple(super().frozen_modules())
        return (*frozen, self.regressor) if self.two_stage else frozen

    def has_main_loss(self) -> bool:
        return not self.two_stage  # the paper's form moves the hint term to the init stage

    def hint_pair(self, s_feats: Dict[str, torch.Tensor], t_feats: Dict[str, torch.Tensor]):
        """The regressed student hint and the teacher's feature at ``hint_layer``."""
        k = self.opts.hint_layer
        f_s = as_map(s_feats[self.s_groups["feat"][k]])
        f_t = as_map(t_feats[self.t_groups["feat"][k]])
        return self.regressor(f_s), f_t

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        if self.two_stage:
            return {}  # the hint was the init stage's
        return {"hint": hint_loss(*self.hint_pair(out.s, out.t))}

    def init_loss(self, batch) -> Dict[str, torch.Tensor]:
        """The paper's stage 1 on one batch: ``{"hint": hint_loss}``."""
        x = self.unpack(batch)[0]
        _, t_feats = Distiller.teacher_forward(self, x)
        _, s_feats = self.student_forward(x)
        return {"hint": hint_loss(*self.hint_pair(s_feats, t_feats))}

    def init_stage(self, epochs: int) -> Optional[InitStage]:
        if not self.two_stage:
            return None
        modules = {"regressor": self.regressor, "student_features": student_feature_modules(self.student)}
        for m in modules.values():
            m.requires_grad_(True)
        return InitStage("hint_init", StageObjective(self.student, self.teacher, modules, self.init_loss), epochs)

    def describe(self) -> str:
        return super().describe() + f" [form: {HINT_FORMS[self.opts.hint_stages]}]"

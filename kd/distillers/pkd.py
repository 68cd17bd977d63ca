"""PKD: patient knowledge distillation, in the image-classification form of ``karanchahal/distiller``
``distillers/pkd_distiller.py`` (KC; method after Sun et al., "Patient Knowledge Distillation
for BERT Model Compression", EMNLP 2019: its patience loss on intermediate layers, here on the
raw features as KC runs it, ``normalized_patience=False``)

``loss = (1 - lambda) CE + lambda T^2 KL(p_t || p_s) + beta * MSE(cat_s, cat_t)``, where
``cat`` is the concatenation of the flattened stage outputs (tap group ``stages``,
post-activation as KC's ``use_relu=True``) of one net, shape ``(B, sum_l C_l H_l W_l)``, and
MSE the mean over all its elements (KC ``F.mse_loss``, ``normalized_patience=False``). The
student and teacher concatenations must have the same length; a mismatch is a clear error
at construction.

Defaults (KC ``calculate_loss`` / ``distill_loss``): lambda 0.5 -> ``-r 0.5 -a 0.5``; beta 10
-> ``-b 10``, the MSE returned unweighted as ``pkd``. T is ``--kd_T``: KC's 5 is the Distiller
recipe's default; under the crd recipe the default is 4, so pass ``--kd_T 5`` to reproduce KC
there. ``weights_distiller`` equals ``weights``.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights
from kd.distillers.registry import register_distiller


def patience_loss(s_feats: Sequence[torch.Tensor], t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """MSE between the concatenated, per-sample flattened stage features of the two nets."""
    cat_s = torch.cat([f.flatten(1) for f in s_feats], dim=1)
    cat_t = torch.cat([f.flatten(1) for f in t_feats], dim=1)
    return F.mse_loss(cat_s.float(), cat_t.float())


@register_distiller("pkd")
class PKD(Distiller):
    taps = ("stages",)
    weights = Weights(r=0.5, a=0.5, b=10.0)
    weights_distiller = Weights(r=0.5, a=0.5, b=10.0)

    def setup(self) -> None:
        s_total = sum(math.prod(s[1:]) for s in self.s_shape("stages"))
        t_total = sum(math.prod(s[1:]) for s in self.t_shape("stages"))
        if s_total != t_total:
            s_desc = " + ".join("x".join(map(str, s[1:])) for s in self.s_shape("stages"))
            t_desc = " + ".join("x".join(map(str, s[1:])) for s in self.t_shape("stages"))
            raise ValueError(f"pkd compares the concatenated stage features, which need the same size: student "
                             f"{s_desc} = {s_total}, teacher {t_desc} = {t_total}")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        return {"pkd": patience_loss(out.s_feats("stages"), out.t_feats("stages"))}

"""SP: similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation",
ICCV 2019: the batch Gram matrix ``G = Q Q^T`` of the flattened activations, row-wise
L2-normalised, and the loss ``||G_t - G_s||_F^2 / B^2``). Reference: RepDistiller
``distiller_zoo/SP.py`` (registered there as ``similarity``)

Read on the last stage output (``feat[-2]``, post-activation), reshaped to ``B x (C*H*W)``.
The order is RepDistiller's: Gram matrix first, then each ROW of it L2-normalised (not the
features before the product, and not the whole matrix by its norm; RepDistiller #45 and
torchdistill #221 discuss the choice, the notes say keep RepDistiller's). Student and teacher
may differ in shape; only their B x B Gram matrices are compared.

Defaults are RepDistiller's script ``-r 1 -a 0 -b 3000`` (mdistiller also uses 3000).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights
from kd.distillers.registry import register_distiller


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """Row-L2-normalised batch Gram matrix of ``f`` flattened to ``B x (everything else)``."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``||G_t - G_s||_F^2 / B^2`` with the row-normalised Gram matrices."""
    b = f_s.shape[0]
    return (similarity_matrix(f_t) - similarity_matrix(f_s)).pow(2).sum() / (b * b)


@register_distiller("sp", "similarity")
class SP(Distiller):
    taps = ("last_stage",)
    weights = Weights(r=1.0, a=0.0, b=3000.0)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        pairs = zip(out.s_feats("last_stage"), out.t_feats("last_stage"))
        return {"sp": sum(sp_loss(fs, ft) for fs, ft in pairs)}

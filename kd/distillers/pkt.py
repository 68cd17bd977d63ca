"""PKT: probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV 2018: conditional probabilities from the cosine-similarity
kernel ``(cos + 1) / 2`` normalised over each row, matched with KL(P_t || P_s)). Reference:
RepDistiller ``distiller_zoo/PKT.py`` (the authors' code)

Read on the pooled penultimate features (``feat[-1]``). Each row is divided by ``||f|| + eps``
(NaNs set to 0), the B x B cosine matrix is mapped to ``(cos + 1) / 2`` and row-normalised
into P; the loss is ``mean_{i,j} P_t[i,j] * log((P_t[i,j] + eps) / (P_s[i,j] + eps))``, the
mean over all B^2 entries (not a per-row sum), eps = 1e-7 throughout.

Defaults are RepDistiller's script ``-r 1 -a 0 -b 30000`` (mdistiller also uses 30000).
"""
from __future__ import annotations

from typing import Dict

import torch

from kd.distillers.base import Distiller, Outputs, Weights
from kd.distillers.registry import register_distiller

PKT_EPS = 1e-7


def pkt_probabilities(f: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """Row-normalised ``(cos + 1) / 2`` similarity matrix of the rows of ``f`` (flattened)."""
    flat = f.flatten(1)
    unit = flat / (flat.norm(dim=1, keepdim=True) + eps)
    unit = torch.where(torch.isnan(unit), torch.zeros_like(unit), unit)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """``mean(P_t * log((P_t + eps) / (P_s + eps)))`` over the B x B entries."""
    p_s, p_t = pkt_probabilities(f_s, eps), pkt_probabilities(f_t, eps).detach()
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_distiller("pkt")
class PKT(Distiller):
    taps = ("pool",)
    weights = Weights(r=1.0, a=0.0, b=30000.0)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        return {"pkt": pkt_loss(out.s_feats("pool")[0], out.t_feats("pool")[0])}

"""AT: attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR
2017, Eq. 2 with p = 2; RepDistiller ``distiller_zoo/AT.py``).

For each pair of stage outputs (``feat[1:-1]``, paired in order and truncated to the shorter
list): the attention map ``Q = normalize(flatten(mean_c f^p))`` (channel *mean* of the
p-th power, L2-normalised over positions); where the spatial sizes differ the larger map is
adaptive-average-pooled to the smaller first; the loss is ``mean((Q_s - Q_t)^2)`` summed
over the pairs. Defaults are RepDistiller's ``-r 1 -a 0 -b 1000``, p 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``normalize(flatten(mean_c f^p))``: one L2-normalised attention vector per sample."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention-transfer loss of one feature pair (the larger map pooled to the smaller)."""
    hs, ht = f_s.shape[2], f_t.shape[2]
    if hs > ht:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif ht > hs:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_distiller("attention", "at")
class Attention(Distiller):
    taps = ("stages",)
    weights = Weights(r=1.0, a=0.0, b=1000.0)

    @dataclass
    class Options:
        at_p: float = option(2.0, "AT: power p of the attention map")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        pairs = zip(out.s_feats("stages"), out.t_feats("stages"))
        return {"at": sum(at_loss(fs, ft, self.opts.at_p) for fs, ft in pairs)}

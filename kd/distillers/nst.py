"""NST: neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer", arXiv 1707.01219, 2017: the squared MMD between the two nets'
neuron-activation distributions with the polynomial kernel ``k(a, b) = (a^T b)^2``, i.e.
degree 2 and c = 0). Reference: RepDistiller ``distiller_zoo/NST.py``

For each pair of stage outputs (``feat[1:-1]``, paired in order and truncated to the shorter
list) the larger map is adaptive-average-pooled to the smaller one; every channel's map is
flattened over H*W and L2-normalised, giving one "sample" per channel; the loss is
``mean K_tt + mean K_ss - 2 mean K_st`` with ``K_xy[i, j] = (x_i^T y_j)^2`` over the channel
samples of each image (the means run over the batch and both channel indices, so student and
teacher may have different widths). The per-stage values are summed.

Defaults are RepDistiller's script ``-r 1 -a 0 -b 50`` (mdistiller also uses 50). The
teacher-teacher term is a constant for the student (RepDistiller computes and detaches it);
it is kept so the value is the full MMD and is zero when the two nets agree. Pooling matches
the full spatial size (RepDistiller pools to a square ``t_H x t_H``; the same for square maps).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights
from kd.distillers.registry import register_distiller


def _match_spatial(f_s: torch.Tensor, f_t: torch.Tensor):
    """Average-pool the larger of two feature maps to the smaller one's spatial size."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_t.shape[2] > f_s.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return f_s, f_t


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch and both channel indices of ``(a_i^T b_j)^2`` (a: B x Ca x N, b: B x Cb x N)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the degree-2 polynomial kernel between per-channel normalised maps."""
    f_s, f_t = _match_spatial(f_s, f_t)
    a_s = F.normalize(f_s.flatten(2), dim=2)
    a_t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel_mean(a_t, a_t).detach() + poly_kernel_mean(a_s, a_s) - 2 * poly_kernel_mean(a_s, a_t)


@register_distiller("nst")
class NST(Distiller):
    taps = ("stages",)
    weights = Weights(r=1.0, a=0.0, b=50.0)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        pairs = zip(out.s_feats("stages"), out.t_feats("stages"))
        return {"nst": sum(nst_loss(fs, ft) for fs, ft in pairs)}

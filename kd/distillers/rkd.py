"""RKD: relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge
Distillation", CVPR 2019: the distance-wise potential, pairwise Euclidean distances divided by
their mean over the distinct pairs, and the angle-wise potential, the cosine of the angle
``e_j - e_i, e_k - e_i`` at every vertex ``i``, each matched with the Huber / smooth-L1 loss).
Reference: RepDistiller ``distiller_zoo/RKD.py`` and mdistiller ``distillers/RKD.py``

Read on the pooled penultimate features (``feat[-1]``). Distances: ``sqrt(max(|e_i|^2 +
|e_j|^2 - 2 e_i.e_j, 1e-12))`` with the diagonal set to 0, divided by the mean of the
non-zero entries; ``smooth_l1`` (beta 1) averaged over all B^2 entries. Angles: the B x B x B
cosines (a zero difference vector, ``j == i`` or ``k == i``, gives cosine 0 as
``F.normalize`` does), ``smooth_l1`` averaged over all B^3 entries.

Defaults: RepDistiller's script ``-r 1 -a 0 -b 1``, with the internal weights 25 (distance,
``--rkd_dist``) and 50 (angle, ``--rkd_angle``) of RepDistiller's ``RKDLoss`` and mdistiller's
config. The two terms are returned as separate losses ``rkd_dist`` and ``rkd_angle``, already
multiplied by their internal weights (their sum is RepDistiller's loss); a term whose internal
weight is 0 is not computed. The mean over non-zero distances is a masked sum divided by a
count (no boolean indexing, hence no host sync); the values are identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """B x B Euclidean distances between the rows of ``e``; squared distances are clamped at
    ``eps`` before the root and the diagonal is exactly 0."""
    sq_norms = e.pow(2).sum(1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * e @ e.t()).clamp_min(eps)
    off_diagonal = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return sq_dist.sqrt() * off_diagonal


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by the mean of their non-zero entries."""
    d = pairwise_distances(e)
    nonzero = (d > 0).to(d.dtype)
    return d / ((d * nonzero).sum() / nonzero.sum())


def angle_cosines(e: torch.Tensor) -> torch.Tensor:
    """``cos[i, j, k]``: cosine between ``e_j - e_i`` and ``e_k - e_i`` (0 for a zero vector)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2))


def rkd_distance_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the two nets' mean-normalised distance matrices (unweighted)."""
    return F.smooth_l1_loss(normalised_distances(f_s.flatten(1)), normalised_distances(f_t.flatten(1)).detach())


def rkd_angle_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the two nets' triplet angle cosines (unweighted)."""
    return F.smooth_l1_loss(angle_cosines(f_s.flatten(1)), angle_cosines(f_t.flatten(1)).detach())


@register_distiller("rkd")
class RKD(Distiller):
    taps = ("pool",)
    weights = Weights(r=1.0, a=0.0, b=1.0)

    @dataclass
    class Options:
        rkd_dist: float = option(25.0, "RKD: internal weight of the distance term")
        rkd_angle: float = option(50.0, "RKD: internal weight of the angle term")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        f_s, f_t = out.s_feats("pool")[0], out.t_feats("pool")[0]
        losses: Dict[str, torch.Tensor] = {}
        if self.opts.rkd_dist:
            losses["rkd_dist"] = self.opts.rkd_dist * rkd_distance_loss(f_s, f_t)
        if self.opts.rkd_angle:
            losses["rkd_angle"] = self.opts.rkd_angle * rkd_angle_loss(f_s, f_t)
        return losses

"""Triplet KD, in the two forms karanchahal/distiller disagrees on.

``triplet`` (recommended default; the form Distiller's README describes, "using the student as
negative example"): a triplet hinge on the logits, anchored at the student,

    mean_i max(0, d(s_i, t_i) - d(s_i, n_i) + margin)      (``triplet``, weighted by ``-b``)

plus Hinton KD (``ce`` / ``kd`` by ``-r`` / ``-a`` at ``--kd_T``). The positive is the teacher's
output on the same sample; the negative ``n_i`` is the teacher's output (``--triplet_negative
teacher``, default) or the student's (``student``, the README's wording; not detached, so the
hinge also pushes that sample's student output away) on a sample of a different class from the
same batch, drawn uniformly at random on the device: a random score per (anchor, candidate) pair,
same-class candidates masked out, argmax. An anchor whose batch holds no other class is left
out of the mean. Classes are the labels (the dominant class of soft targets), or the teacher's
prediction on unlabelled batches. ``d`` is the Euclidean distance (``--triplet_dist l2``,
``F.pairwise_distance``) or the cosine distance ``1 - cos`` (``cosine``). The margin has no
reference value and must be given (``--triplet_margin``; constructing without it raises). Our
default weights: KD's (``-r 0.1 -a 0.9``, RepDistiller; ``-r 0.5 -a 0.5`` under the Distiller
recipe, its lambda 0.5) with the hinge at ``-b 1`` (no reference value).

``triplet_kc`` (Distiller's code, ``trainer.py::TripletTrainer``): no cross-entropy (commented
out there) and no negative:

    (1 - lambda) * CosineEmbedding(s, t, +1) + lambda * T^2 * KL(p_t || p_s)

``CosineEmbedding(s, t, +1) = mean_i (1 - cos(s_i, t_i))`` (``triplet_cos``, weighted by ``-b``),
the KL is ``kd`` (``-a``). Defaults ``-r 0 -a 0.5 -b 0.5`` (lambda 0.5) under either recipe. Results
must say which form was run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights, hard_labels, option
from kd.distillers.registry import register_distiller

NEGATIVES = ("teacher", "student")
DISTANCES = ("l2", "cosine")


def pick_negatives(labels: torch.Tensor, scores: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the index of a random other-class sample of the batch, and whether one
    exists. ``scores`` (``(B, B)`` in [0, 1), default uniform random) decides the pick: the
    other-class candidate with the highest score."""
    n = labels.shape[0]
    if scores is None:
        scores = torch.rand(n, n, device=labels.device)
    other_class = labels[:, None] != labels[None, :]
    index = scores.masked_fill(~other_class, -1.0).argmax(1)
    return index, other_class.any(1)


def logit_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Per-sample distance: Euclidean (``F.pairwise_distance``) or ``1 - cos``."""
    if kind == "l2":
        return F.pairwise_distance(a, b)
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=1)
    raise ValueError(f"triplet distance must be one of {', '.join(DISTANCES)}; got {kind!r}")


def triplet_hinge(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                  valid: Optional[torch.Tensor] = None, kind: str = "l2") -> torch.Tensor:
    """``mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)`` over the anchors marked ``valid``."""
    hinge = (logit_distance(anchor, positive, kind) - logit_distance(anchor, negative, kind) + margin).clamp_min(0)
    if valid is None:
        return hinge.mean()
    v = valid.to(hinge.dtype)
    return (hinge * v).sum() / v.sum().clamp_min(1.0)


def triplet_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor, margin: float,
                    negative: str = "teacher", kind: str = "l2",
                    scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The README form's hinge: anchor ``s_i``, positive ``t_i``, negative the teacher's (or the
    student's) output on a random other-class sample of the batch."""
    index, valid = pick_negatives(labels, scores)
    pool = t_logits if negative == "teacher" else s_logits
    return triplet_hinge(s_logits, t_logits.detach(), pool[index], margin, valid, kind)


def cosine_embedding(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """``CosineEmbeddingLoss(s, t, +1)``: ``mean_i (1 - cos(s_i, t_i))``."""
    target = torch.ones(s_logits.shape[0], device=s_logits.device, dtype=s_logits.dtype)
    return F.cosine_embedding_loss(s_logits, t_logits.detach(), target)


@register_distiller("triplet")
class TripletKD(Distiller):
    weights = Weights(r=0.1, a=0.9, b=1.0)
    weights_distiller = Weights(r=0.5, a=0.5, b=1.0)

    @dataclass
    class Options:
        triplet_margin: Optional[float] = option(None, "triplet: hinge margin (no reference value: must be set)")
        triplet_negative: str = option("teacher", "triplet: negative = teacher | student output of an "
                                                  "other-class sample")
        triplet_dist: str = option("l2", "triplet: distance between logits, l2 | cosine")

    def setup(self) -> None:
        o = self.opts
        if o.triplet_margin is None:
            raise ValueError("triplet: --triplet_margin must be set explicitly (the reference gives no value); "
                             "or run triplet_kc, Distiller's code form, which has no margin")
        if o.triplet_negative not in NEGATIVES:
            raise ValueError(f"triplet: --triplet_negative must be one of {', '.join(NEGATIVES)}; "
                             f"got {o.triplet_negative!r}")
        if o.triplet_dist not in DISTANCES:
            raise ValueError(f"triplet: --triplet_dist must be one of {', '.join(DISTANCES)}; got {o.triplet_dist!r}")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        labels = hard_labels(out.y) if out.y is not None else out.t_logits.argmax(1)
        o = self.opts
        return {"triplet": triplet_kd_loss(out.s_logits, out.t_logits, labels, float(o.triplet_margin),
                                           o.triplet_negative, o.triplet_dist)}


@register_distiller("triplet_kc")
class TripletKC(Distiller):
    weights = Weights(r=0.0, a=0.5, b=0.5)
    weights_distiller = Weights(r=0.0, a=0.5, b=0.5)

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        return {"triplet_cos": cosine_embedding(out.s_logits, out.t_logits)}

"""KDSVD: self-supervised KD with singular value decomposition (Lee, Kim & Song, "Self-supervised
Knowledge Distillation Using Singular Value Decomposition", ECCV 2018: compress each feature
map to its leading right singular vectors, then distil the RBF correlation between the
compressed features of consecutive layers). Reference: RepDistiller ``distiller_zoo/KDSVD.py``
and mdistiller ``distillers/KDSVD.py`` (ports of the authors' TensorFlow code)

On the stage outputs (``feat[1:-1]``), per stage:

1. each map is viewed as ``B x HW x C`` (positions x channels) and decomposed; the top ``k``
   right singular vectors are kept for the teacher, the top ``k + 3`` for the student, each
   unit-normalised over C, and the first ``k`` singular values (teacher) L2-normalised over
   the k of them (so for k = 1 they are exactly 1, as in the reference);
2. for each teacher vector, the student vector with the largest ``|cosine|`` is picked and
   given the sign of that cosine (student and teacher must have the same channel count at
   every stage, as in the reference);
3. both are scaled by the teacher's normalised singular values;
4. for each pair of consecutive stages ``(l-1, l)`` the kernels
   ``exp(-(v_l[c] - v_{l-1}[d])^2 / 8)`` over every channel pair (c, d) are built for both nets
   and the loss adds ``sum((K_s - K_t)^2)`` with non-finite entries set to 0; the sum over
   stage pairs is divided by B.

Defaults: ``-r 1 -a 0 -b 1``, k = 1 (``--svd_k``): mdistiller's FEAT_WEIGHT 1.0 and K 1;
RepDistiller ships the loss but no script line for it. Deviations: the decomposition uses
``torch.linalg.svd`` (``torch.svd`` is deprecated), in float32 for half-precision maps; the map
is read as ``B x HW x C`` as RepDistiller does (mdistiller's ``view(B, C*H, W)`` mixes channels
and rows and is not copied); non-finite values are masked with ``torch.where`` only, never
branched on (as the references' ``removenan``). The student's singular vectors get their gradient
from :class:`_LeadingRightSingularVectors`, which involves only the kept vectors: torch's full
SVD backward (what the references use) is Inf/NaN as soon as two *unused* singular values
repeat, e.g. the zeros of dead channels, and that NaN reached the weights and ended a kd_mnist
run here. Where the full backward is finite the two gradients agree (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN and Inf entries replaced by 0."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _LeadingRightSingularVectors(torch.autograd.Function):
    """The first ``n`` right singular vectors of ``a`` (B x P x C), as columns (B x C x n), with
    a backward that only involves those ``n`` vectors.

    Forward: ``torch.linalg.svd``. Backward: the first-order perturbation of the eigenvectors
    of ``M = a^T a`` (whose eigenvectors are ``a``'s right singular vectors, eigenvalues
    ``s^2``): ``dv_i = sum_{j != i} v_j v_j^T dM v_i / (s_i^2 - s_j^2)`` over the complete basis,
    so ``grad_M = V (C o (V^T g)) V_n^T`` (symmetrised) with ``C[j, i] = 1 / (s_i^2 - s_j^2)``,
    and ``grad_a = 2 a grad_M``. This equals the SVD's own gradient wherever that is finite, but
    torch's full backward also divides by differences between the *unused* singular values,
    which are Inf/NaN when they repeat (the zeros of dead channels, any rank-deficient map) and
    then poison the whole gradient even though those terms multiply zero. Here a pair with
    ``s_i^2 == s_j^2`` contributes 0 (only reachable when the kept vectors themselves are
    degenerate, where no finite gradient exists).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, n: int):
        _, sing_values, vh = torch.linalg.svd(a, full_matrices=True)
        basis = vh.transpose(1, 2)  # B x C x C, columns = right singular vectors
        sq = a.new_zeros(a.shape[0], basis.shape[-1])
        sq[:, :sing_values.shape[1]] = sing_values.pow(2)
        ctx.save_for_backward(a, basis, sq)
        ctx.n = n
        return basis[:, :, :n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, basis, sq = ctx.saved_tensors
        n = ctx.n
        coords = basis.transpose(1, 2) @ grad  # B x C x n: v_j . g_i
        gap = sq[:, None, :n] - sq[:, :, None]  # B x C x n: s_i^2 - s_j^2
        inv_gap = torch.where(gap.abs() > 0, 1.0 / torch.where(gap.abs() > 0, gap, torch.ones_like(gap)),
                              torch.zeros_like(gap))
        grad_m = basis @ (coords * inv_gap) @ basis[:, :, :n].transpose(1, 2)
        grad_m = 0.5 * (grad_m + grad_m.transpose(1, 2))
        return 2.0 * a @ grad_m, None


def top_singular(f: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` singular values (B x n, L2-normalised over n) and right singular vectors
    (B x C x n, unit columns) of the ``B x HW x C`` view of a ``B x C x H x W`` map."""
    positions_by_channels = f.flatten(2).transpose(1, 2)
    if positions_by_channels.dtype not in (torch.float32, torch.float64):
        positions_by_channels = positions_by_channels.float()  # no half-precision SVD
    if positions_by_channels.requires_grad:  # the student: vectors with a well-defined gradient
        right_vectors = _finite(_LeadingRightSingularVectors.apply(positions_by_channels, n))
        return None, F.normalize(right_vectors, dim=1)
    _, sing_values, vh = torch.linalg.svd(positions_by_channels, full_matrices=False)
    right_vectors = _finite(vh.transpose(1, 2))[:, :, :n]
    return F.normalize(_finite(sing_values)[:, :n], dim=1), F.normalize(right_vectors, dim=1)


def align_singular_vectors(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher column of ``v_t`` (B x C x k), the student column of ``v_s``
    (B x C x m) with the largest ``|cosine|`` times that cosine's sign: B x C x k."""
    cosine = v_s.transpose(1, 2) @ v_t  # B x m x k
    best = cosine.abs().amax(dim=1, keepdim=True)
    selector = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ selector


def rbf_kernel(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """``exp(-(v[c] - v_prev[d])^2 / 8)`` for every channel pair: B x C x C_prev x k."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8)


def svd_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor], k: int = 1) -> torch.Tensor:
    """KDSVD loss over the stage maps ``g_s`` / ``g_t`` (paired in order), divided by B."""
    total = g_s[0].new_zeros((), dtype=torch.promote_types(g_s[0].dtype, torch.float32))
    prev = None
    for f_s, f_t in zip(g_s, g_t):
        s_t, v_t = top_singular(f_t, k)
        _, v_s = top_singular(f_s, k + 3)
        scale = s_t.unsqueeze(1)
        v_s = align_singular_vectors(v_s, v_t) * scale
        v_t = v_t * scale
        if prev is not None:
            v_s_prev, v_t_prev = prev
            diff = (rbf_kernel(v_s, v_s_prev) - rbf_kernel(v_t, v_t_prev).detach()).pow(2)
            total = total + _finite(diff).sum()
        prev = (v_s, v_t)
    return total / g_s[0].shape[0]


@register_distiller("svd", "kdsvd")
class KDSVD(Distiller):
    taps = ("stages",)
    weights = Weights(r=1.0, a=0.0, b=1.0)

    @dataclass
    class Options:
        svd_k: int = option(1, "KDSVD: right singular vectors kept per teacher map (the student keeps k + 3)")

    def setup(self) -> None:
        s_channels: List[int] = [s[1] for s in self.s_shape("stages")]
        t_channels: List[int] = [s[1] for s in self.t_shape("stages")]
        if any(cs != ct for cs, ct in zip(s_channels, t_channels)):
            raise ValueError(f"kdsvd compares singular vectors over channels, so student and teacher stages need "
                             f"equal channel counts; got student {s_channels}, teacher {t_channels}")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        return {"svd": svd_loss(out.s_feats("stages"), out.t_feats("stages"), self.opts.svd_k)}

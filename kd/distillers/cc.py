"""CC: correlation congruence (Peng et al., "Correlation Congruence for Knowledge Distillation",
ICCV 2019). Reference: RepDistiller ``distiller_zoo/CC.py`` (the code the authors sent to
RepDistiller) and its wiring in ``train_student.py``

Both nets' pooled penultimate features (``feat[-1]``) are mapped by a trainable
:class:`LinearEmbed` (flatten + Linear) to ``--feat_dim`` dimensions (128, RepDistiller's
``--feat_dim`` default, the flag CRD also reads). With ``delta_i = |e_s,i - e_t,i|`` the loss
is ``mean_i sum_d delta_i,d * delta_{i+1},d`` over the B - 1 consecutive sample pairs of the
batch, exactly as RepDistiller computes it (this is RepDistiller's form, not the paper's
kernel-based correlation matrices; Zoo's Gaussian-RBF Taylor variant is not implemented).

The teacher embedding is trainable although the teacher is frozen, as in RepDistiller: the
teacher's pooled feature comes from the ``no_grad`` teacher forward and the embedding is applied
afterwards, in the step with gradients. Both embeddings are ``extra_modules()`` ``cc_embed_s``
and ``cc_embed_t``. Defaults are RepDistiller's script ``-r 1 -a 0 -b 0.02``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn as nn

from kd.distillers._modules import LinearEmbed
from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """``mean_i sum_d |e_s - e_t|_{i,d} * |e_s - e_t|_{i+1,d}`` over consecutive samples."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_distiller("cc", "correlation")
class CC(Distiller):
    taps = ("pool",)
    weights = Weights(r=1.0, a=0.0, b=0.02)

    @dataclass
    class Options:
        feat_dim: int = option(128, "dimension of the embeddings of the pooled features")

    def setup(self) -> None:
        self.embed_s = LinearEmbed(math.prod(self.s_shape("pool")[0][1:]), self.opts.feat_dim)
        self.embed_t = LinearEmbed(math.prod(self.t_shape("pool")[0][1:]), self.opts.feat_dim)

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"cc_embed_s": self.embed_s, "cc_embed_t": self.embed_t}

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        e_s = self.embed_s(out.s_feats("pool")[0])
        e_t = self.embed_t(out.t_feats("pool")[0])
        return {"cc": cc_loss(e_s, e_t)}

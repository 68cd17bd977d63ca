"""DKD: decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR
2022, Eq. 7; reference ``megvii-research/mdistiller`` ``mdistiller/distillers/DKD.py``).

Hinton's KD loss splits into a target-class part and a non-target part, which DKD weights
separately:

* TCKD = KL(b_t || b_s) * T^2, with the binary distribution ``b = [p_y, 1 - p_y]`` of the
  temperature-softened softmax (``p_y``: probability of the labelled class);
* NCKD = KL(p^_t || p^_s) * T^2, with ``p^`` the softened softmax over the non-target classes
  only (renormalised to sum to 1);

both summed over classes and divided by the batch size (MD's ``kl_div(size_average=False) /
B``). The loss is ``CE + w(epoch) * (alpha * TCKD + beta * NCKD)`` with the linear warm-up
``w = min(epoch / warmup, 1)``. MD counts epochs from 1 (its trainer starts at ``epoch = 1``),
so its first epoch already has ``w = 1/warmup``; our trainer counts from 0, hence
``w = min((self.epoch + 1) / warmup, 1)``: the same factor epoch for epoch (0.05 in the first
epoch, 1 from epoch ``warmup - 1`` on, with warmup 20).

The two parts are returned as the named losses ``tckd`` and ``nckd``, each already multiplied
by its alpha/beta and by the warm-up factor; the trainer weights them by ``-b`` (default 1).

Defaults (MD ``mdistiller/engine/cfg.py`` and ``configs/cifar100/dkd/*.yaml``): ``-r 1 -a 0
-b 1``, ``dkd_alpha`` 1, ``dkd_beta`` 8, ``dkd_warmup`` 20, T from ``--kd_T`` (4 under the
crd recipe, as MD's CIFAR-100 configs; the Distiller recipe's default 5 is not MD's, pass
``--kd_T 4``). Per-pair ``dkd_beta`` of MD's CIFAR-100 configs:

================================================  ====
teacher -> student                                beta
================================================  ====
resnet56 -> resnet20, resnet110 -> resnet32       2
vgg13 -> vgg8, vgg13 -> mobilenetv2               6
wrn40_2 -> wrn16_2, wrn40_2 -> wrn40_1            6
resnet32x4 -> resnet8x4 / shufflenetv1 / v2       8 (the default: no BETA in the yaml)
wrn40_2 -> shufflenetv1, resnet50 -> mobilenetv2  8 (likewise)
================================================  ====

(ImageNet, ``configs/imagenet/r34_r18/dkd.yaml``: beta 0.5, T 1, warm-up 1.)

Deviation, numerical only: MD builds ``b`` by summing softmax probabilities and takes their
log, and masks the target out of the non-target softmax by subtracting 1000 from its logit.
Here ``log b`` and ``log p^`` come from log-sum-exps over the target / non-target logits
(the same values, without ``log(0)`` when a probability underflows), computed in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from kd.distillers.base import Distiller, Outputs, Weights, hard_labels, option
from kd.distillers.registry import register_distiller


def dkd_parts(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor,
              T: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)`` of a batch, each ``KL * T^2`` summed over classes and divided by B."""
    zs, zt = s_logits.float() / T, t_logits.float() / T
    is_target = torch.zeros_like(zs, dtype=torch.bool).scatter_(1, target.view(-1, 1), True)

    def log_parts(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        lse_all = torch.logsumexp(z, dim=1, keepdim=True)
        lse_other = torch.logsumexp(z.masked_fill(is_target, float("-inf")), dim=1, keepdim=True)
        z_target = z.gather(1, target.view(-1, 1))
        log_binary = torch.cat([z_target - lse_all, lse_other - lse_all], dim=1)  # log [p_y, 1 - p_y]
        log_non_target = z - lse_other  # log p^ (meaningless at the target, masked below)
        return log_binary, log_non_target

    log_bs, log_ns = log_parts(zs)
    log_bt, log_nt = log_parts(zt)
    batch = zs.shape[0]
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / batch * T * T
    nckd_terms = torch.where(is_target, torch.zeros_like(log_nt), log_nt.exp() * (log_nt - log_ns))
    nckd = nckd_terms.sum() / batch * T * T
    return tckd, nckd


def dkd_warmup_factor(epoch: int, warmup: int) -> float:
    """MD's ``min(epoch / warmup, 1)`` for our 0-based ``epoch`` (MD's epochs start at 1)."""
    return min((epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0


@register_distiller("dkd")
class DKD(Distiller):
    weights = Weights(r=1.0, a=0.0, b=1.0)
    reads_temperature = True

    @dataclass
    class Options:
        dkd_alpha: float = option(1.0, "DKD: weight of TCKD (target-class KD)")
        dkd_beta: float = option(8.0, "DKD: weight of NCKD (non-target-class KD); MD CIFAR-100: 8, but 2 for "
                                      "resnet56->resnet20 and resnet110->resnet32, 6 for vgg13->vgg8/mobilenetv2 "
                                      "and wrn40_2->wrn16_2/wrn40_1")
        dkd_warmup: int = option(20, "DKD: epochs of the linear warm-up of the DKD terms")

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        if out.y is None:
            raise ValueError("dkd needs labelled batches (x, y): TCKD/NCKD split on the labelled class")
        tckd, nckd = dkd_parts(out.s_logits, out.t_logits, hard_labels(out.y), self.T)
        ramp = dkd_warmup_factor(self.epoch, self.opts.dkd_warmup)
        return {"tckd": ramp * self.opts.dkd_alpha * tckd, "nckd": ramp * self.opts.dkd_beta * nckd}

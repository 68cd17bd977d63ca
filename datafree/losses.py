"""Loss terms of data-free synthesis and of the data-free KD loop.

Formulas follow Fast-Datafree (Fang et al., AAAI-22; ``datafree/hooks.py`` and
``datafree/criterions.py`` of zju-vipa/Fast-Datafree), DeepInversion (Yin et al., CVPR-20)
and DAFL (Chen et al., ICCV-19).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import distributed


def masked_adversarial_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Fast-Datafree's adversarial term: -(1/N) sum_i 1[argmax s_i = argmax t_i] KL(p_t,i || p_s,i)
    at T = 1. Maximising the divergence only where the two already agree pushes the generator
    towards the student's decision boundary without producing garbage the teacher rejects."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    log_p_s = F.log_softmax(student_logits, dim=1)
    log_p_t = F.log_softmax(teacher_logits, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return -(agree * kl).mean()


def js_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 3.0) -> torch.Tensor:
    """DeepInversion's competition term at temperature T, in Fast-Datafree's exact form
    (``datafree/synthesis/deepinversion.py``): M = (P + Q) / 2 from the
    *unclamped* softmaxes, then P, Q and M each clamped to [0.01, 0.99], and the value
    ``(KL(M || P) + KL(M || Q)) / 2`` (``F.kl_div(log P, M)`` is KL(M || P)), batchmean. This is
    neither the textbook ``(KL(P || M) + KL(Q || M)) / 2`` nor a multiple of it; its negative is
    the adversarial loss."""
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    m = (0.5 * (p_s + p_t)).clamp(0.01, 0.99)
    log_m = m.log()
    kl_m_s = (m * (log_m - p_s.clamp(0.01, 0.99).log())).sum(1)
    kl_m_t = (m * (log_m - p_t.clamp(0.01, 0.99).log())).sum(1)
    return 0.5 * (kl_m_s + kl_m_t).mean()


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation term: -mean |f_t| over the teacher's penultimate features."""
    return -features.abs().mean()


def balance_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy term sum_c p_bar_c log p_bar_c, with p_bar the batch-mean
    teacher softmax; minimising it spreads samples evenly over the classes. Under torchrun
    p_bar is the mean over the global batch (every rank draws the same batch size)."""
    p = F.softmax(teacher_logits, dim=1)
    p_bar = distributed.sum_over_ranks(p.sum(0)) / (p.shape[0] * distributed.current().world_size)
    return (p_bar * torch.log(p_bar + 1e-12)).sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's 4-direction L1 total variation (``get_image_prior_losses``): mean absolute
    differences to the right, down, and both diagonals."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.abs().mean() + d2.abs().mean() + d3.abs().mean() + d4.abs().mean()


class BNStatHook:
    """Forward hook on one ``BatchNorm2d``: distance of the batch's statistics to the layer's
    running statistics (DeepInversion; Fast-Datafree ``DeepInversionHook``).

    The hook reads the BN *input*, computes the channel mean and the biased variance over
    (N, H, W) and stores ``r = ||running_var - var||_2 + ||running_mean - mean||_2`` (plain, not
    squared, L2 norms over channels) in :attr:`loss`.

    With ``momentum`` m > 0 (Fast-Datafree ``--bn_mmt``), once :meth:`update_momentum` has been
    called the target is the blend ``(1 - m) * batch + m * ema`` of the current batch and an EMA
    of earlier rounds' statistics; :meth:`update_momentum` sets ``ema <- m * ema + (1 - m) *
    last batch`` (the first call only copies). ``enabled = False`` makes the hook a no-op, so KD
    steps pay nothing for it.
    """

    def __init__(self, module: nn.BatchNorm2d, momentum: float = 0.0):
        self.module, self.momentum = module, momentum
        self.loss: Optional[torch.Tensor] = None
        self.ema_mean: Optional[torch.Tensor] = None
        self.ema_var: Optional[torch.Tensor] = None
        self._last_mean = self._last_var = None
        self.batch: Optional[tuple] = None  # under torchrun: this rank's (mean, var, count), awaiting the merge
        self.enabled = True
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not self.enabled:
            return
        x = inputs[0]
        mean, var = distributed.channel_moments(x)
        if distributed.current().enabled:  # the global batch's statistics: BNStatLoss.value() merges them
            self.batch, self.loss = (mean, var, x.numel() // x.shape[1]), None
        else:
            self.finish(mean, var)

    def finish(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Set :attr:`loss` from the batch statistics ``mean`` / ``var`` (this rank's, or under
        torchrun the global batch's)."""
        self._last_mean, self._last_var = mean.detach(), var.detach()
        if self.momentum > 0 and self.ema_mean is not None:
            m = self.momentum
            mean = (1 - m) * mean + m * self.ema_mean
            var = (1 - m) * var + m * self.ema_var
        self.loss = (torch.linalg.vector_norm(self.module.running_var - var)
                     + torch.linalg.vector_norm(self.module.running_mean - mean))

    @torch.no_grad()
    def update_momentum(self) -> None:
        if self._last_mean is None:
            return
        if self.ema_mean is None:
            self.ema_mean, self.ema_var = self._last_mean.clone(), self._last_var.clone()
        else:
            m = self.momentum
            self.ema_mean.mul_(m).add_(self._last_mean, alpha=1 - m)
            self.ema_var.mul_(m).add_(self._last_var, alpha=1 - m)

    def remove(self) -> None:
        self.handle.remove()

    def state_dict(self) -> dict:
        return {"ema_mean": self.ema_mean, "ema_var": self.ema_var}

    def load_state_dict(self, state: dict) -> None:
        self.ema_mean, self.ema_var = state["ema_mean"], state["ema_var"]


class BNStatLoss:
    """:class:`BNStatHook` on every ``BatchNorm2d`` of ``model``; :meth:`value` is sum_l r_l
    (equal weights), the ``--bn`` term of Fast-Datafree."""

    def __init__(self, model: nn.Module, momentum: float = 0.0):
        self.hooks: List[BNStatHook] = [BNStatHook(m, momentum) for m in model.modules()
                                        if isinstance(m, nn.BatchNorm2d)]
        if not self.hooks:
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm2d layer, so the BN-statistics loss is "
                "undefined; use --bn 0 (and rely on --oh/--adv), or a teacher with BatchNorm")

    def value(self) -> torch.Tensor:
        """sum_l r_l of the last forward. Under torchrun the statistics are first merged over the
        ranks (one differentiable all-reduce for every layer), so r_l is that of the global batch
        of N ranks x B images, as one process with N x B would compute it."""
        pending = [h for h in self.hooks if h.loss is None and h.batch is not None]
        if pending:
            merged = distributed.global_moments([h.batch[:2] for h in pending], [h.batch[2] for h in pending])
            for h, (mean, var, _) in zip(pending, merged):
                h.finish(mean, var)
                h.batch = None
        return sum(h.loss for h in self.hooks)

    def set_enabled(self, enabled: bool) -> None:
        for h in self.hooks:
            h.enabled = enabled

    def update_momentum(self) -> None:
        for h in self.hooks:
            h.update_momentum()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def state_dict(self) -> list:
        return [h.state_dict() for h in self.hooks]

    def load_state_dict(self, state: list) -> None:
        for h, s in zip(self.hooks, state):
            h.load_state_dict(s)

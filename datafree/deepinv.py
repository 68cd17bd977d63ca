"""``deepinv``: DeepInversion (Yin et al., CVPR-20) as run in Fast-Datafree
(``datafree/synthesis/deepinversion.py``).

Pixels x ~ N(0, 1) in the teacher's normalised space, B x C x H x W, are optimised directly
for ``g_steps`` by Adam(lr_g, betas (0.5, 0.99)) on

    bn * (sum r_teacher - 0.001 * sum r_student) + oh * CE(t, y) + adv * (-JS(s, t; T=3))
    + tv * TV(x) + l2 * ||x||

with a random jitter (roll up to 1/8 of the size, one offset per batch) and flip, and x clamped
to the valid normalised range after each step. The lowest-loss batch joins the pool.
Fast-Datafree fixes tv = l2 = 0, the defaults here.

Fixes of reference bugs (notes §6 item 4): the student-BN term is computed from the student
forward of the same step (it is only defined when adv > 0, so it is dropped otherwise, rather
than using a stale value); ``loss_oh`` is not used before assignment when adv = 0; the best
batch is copied, not aliased to the tensor the optimiser keeps changing.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.base import BestBatch, Synthesizer, SynthesisConfig
from datafree.losses import BNStatLoss, js_divergence, total_variation


def jitter_offsets(steps: int, size: Tuple[int, int], limit: float = 1 / 8, flip: bool = True) -> List[tuple]:
    """One (dy, dx, flip) per inner step, drawn for the whole round at once, so the inner loop
    never reads a random number back from a tensor (DeepInversion's ``jitter_and_flip``:
    a roll of up to ``limit`` of each side and a flip with probability 1/2)."""
    ly, lx = int(size[0] * limit), int(size[1] * limit)
    dy = torch.randint(-ly, ly + 1, (steps,))
    dx = torch.randint(-lx, lx + 1, (steps,))
    flips = (torch.rand(steps) < 0.5) & flip
    return list(zip(dy.tolist(), dx.tolist(), flips.tolist()))


def jitter_flip(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Roll the whole batch by (dy, dx) and flip it horizontally if ``flip``."""
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x.flip(3) if flip else x


class DeepInversionSynthesizer(Synthesizer):
    reads = frozenset({"balanced_targets", "keep"})

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: SynthesisConfig, device: torch.device):
        super().__init__(teacher, student, cfg, device)
        self.tv, self.l2 = cfg.tv, cfg.l2
        self.student_bn = None
        if cfg.bn > 0 and cfg.adv > 0 and any(isinstance(m, nn.BatchNorm2d) for m in student.modules()):
            self.student_bn = BNStatLoss(student, 0.0)
            self.student_bn.set_enabled(False)
        mean = torch.tensor(cfg.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std, device=self.device).view(1, -1, 1, 1)
        self.lo, self.hi = (0 - mean) / std, (1 - mean) / std

    def set_hooks(self, enabled: bool) -> None:
        super().set_hooks(enabled)
        if self.student_bn is not None:
            self.student_bn.set_enabled(enabled)

    def synthesize(self, epoch: int) -> Dict[str, float]:
        cfg = self.cfg
        with self.synthesis() as timer:
            x = self.noise(cfg.batch_size, cfg.nc, cfg.img_size, cfg.img_size).requires_grad_(True)
            targets = self.sample_classes(cfg.batch_size).sort()[0]
            opt = self.adam([x], cfg.lr_g, (0.5, 0.99))
            best, losses = BestBatch(cfg.keep), {}
            best.update(torch.tensor(float("inf"), device=self.device), x)
            for dy, dx, flip in self.inner_steps(jitter_offsets(cfg.g_steps, x.shape[-2:], flip=cfg.flip),
                                                   cfg.g_steps):
                x_aug = jitter_flip(x, dy, dx, flip)
                with self.autocast():
                    t_out = self.teacher(x_aug)
                    s_out = self.student(x_aug) if cfg.adv > 0 else None
                losses = self.bn_term()
                if cfg.oh > 0:
                    losses["oh"] = cfg.oh * F.cross_entropy(t_out, targets)
                if cfg.adv > 0:
                    losses["adv"] = -cfg.adv * js_divergence(s_out, t_out, T=3.0)
                    if self.student_bn is not None:
                        losses["bn_student"] = -0.001 * cfg.bn * self.student_bn.value()
                if self.tv > 0:
                    losses["tv"] = self.tv * total_variation(x)
                if self.l2 > 0:
                    losses["l2"] = self.l2 * torch.linalg.vector_norm(x)
                loss = sum(losses.values())
                best.update(loss, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self.sync_grads((), [x])  # torchrun: the global batch's gradient of this rank's images
                opt.step()
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, self.hi), self.lo)
            images = self.normalize.denormalize(best.tensors[0]).clamp(0, 1)
            self.pool.add(images)
            self.last_images = images
        out = {"syn_time": timer.elapsed, "syn_loss": best.loss.item()}
        out.update({f"syn_{k}": v.item() for k, v in losses.items()})
        return out

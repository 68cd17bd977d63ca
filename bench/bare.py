"""Bare versions of the engine's synthesis rounds, for :mod:`bench.overhead`.

Each ``Bare*`` class does one method's tensor work for one round in a tight loop (the same
generator, losses, augmentation and optimiser kernels as the engine's synthesizer, built from
the same ``SynthesisConfig``) and nothing else: no timing context, no student mode switching
per round, no best-batch tracking, no logging statistics, no checkpointable state. The engine's
cost for the same work divided by this is the engine's overhead.

The bare loops share the teacher and the (eval-mode, frozen) student with the engine's
synthesizer; each keeps its own forward hooks, switched on only while it runs.
"""
from __future__ import annotations

import copy
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.base import SynthesisConfig, build_augment
from datafree.cmi import ProjectionHead, reinit_generator
from datafree.generator import Generator
from datafree.losses import BNStatLoss, balance_loss, js_divergence, masked_adversarial_kl
from engine.data import Normalize, RandomResizedCrop
from engine.utils import optimizer_impl
from kd.losses import kd_kl_div


class BareRound:
    """Common set-up: config, frozen student, BN hooks on the teacher (on only in ``__call__``)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: SynthesisConfig, device: torch.device):
        self.teacher, self.student, self.cfg, self.device = teacher, student, cfg, device
        self.kw = optimizer_impl(cfg.opt_impl, device)
        self.augment = build_augment(cfg).to(device)
        self.normalize = Normalize(cfg.mean, cfg.std).to(device)
        self.bn = BNStatLoss(teacher, cfg.bn_mmt) if cfg.bn > 0 else None
        self.hooks(False)
        self.pool: List[torch.Tensor] = []

    def hooks(self, on: bool) -> None:
        if self.bn is not None:
            self.bn.set_enabled(on)

    def inversion_loss(self, xa: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        t = self.teacher(xa)
        return (cfg.bn * self.bn.value() + cfg.oh * F.cross_entropy(t, y)
                + cfg.adv * masked_adversarial_kl(self.student(xa), t))

    def __call__(self) -> None:
        self.student.requires_grad_(False)
        self.hooks(True)
        x = self.round()
        if self.bn is not None and self.cfg.bn_mmt > 0:
            self.bn.update_momentum()
        self.pool.append((x.detach().clamp(0, 1) * 255).to(torch.uint8))
        del self.pool[:-8]
        self.hooks(False)
        self.student.requires_grad_(True)

    def round(self) -> torch.Tensor:
        raise NotImplementedError


class BareFast(BareRound):
    """``fast``: Adam on (G, z) in place for g_steps."""

    def __init__(self, teacher, student, cfg, device, generator: nn.Module):
        super().__init__(teacher, student, cfg, device)
        self.gen = copy.deepcopy(generator)

    def inner(self, gen: nn.Module, after_backward=None) -> torch.Tensor:
        cfg = self.cfg
        z = torch.randn(cfg.batch_size, cfg.nz, device=self.device, requires_grad=True)
        y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=self.device)
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z], "lr": cfg.lr_z}], lr=cfg.lr_g,
                               betas=(0.5, 0.999), **self.kw)
        for _ in range(cfg.g_steps):
            x = gen(z)
            loss = self.inversion_loss(self.augment(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            opt.step()
        return x

    def round(self) -> torch.Tensor:
        self.gen.train()
        return self.inner(self.gen)


class BareFastMeta(BareFast):
    """``fast_meta`` (FOMAML): the inner loop on a copy G', its gradients summed into G, one meta step."""

    def __init__(self, teacher, student, cfg, device, generator: nn.Module):
        super().__init__(teacher, student, cfg, device, generator)
        self.fast = copy.deepcopy(generator)
        self.meta = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr_g * cfg.g_steps, betas=(0.5, 0.999), **self.kw)

    def round(self) -> torch.Tensor:
        with torch.no_grad():
            for p, q in zip(list(self.fast.parameters()) + list(self.fast.buffers()),
                            list(self.gen.parameters()) + list(self.gen.buffers())):
                p.copy_(q)
        self.fast.train()
        self.meta.zero_grad(set_to_none=True)

        def accumulate():
            for p, q in zip(self.gen.parameters(), self.fast.parameters()):
                if q.grad is not None:
                    p.grad = q.grad.clone() if p.grad is None else p.grad.add_(q.grad)

        x = self.inner(self.fast, accumulate)
        self.meta.step()
        return x


class BareDeepInv(BareRound):
    """DeepInversion: Adam on the pixels, jitter + flip, student-BN and JS terms, clamp."""

    def __init__(self, teacher, student, cfg, device):
        super().__init__(teacher, student, cfg, device)
        self.student_bn = BNStatLoss(student, 0.0)
        mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)
        self.lo, self.hi = -mean / std, (1 - mean) / std

    def hooks(self, on: bool) -> None:
        super().hooks(on)
        if hasattr(self, "student_bn"):
            self.student_bn.set_enabled(on)

    def round(self) -> torch.Tensor:
        cfg = self.cfg
        x = torch.randn(cfg.batch_size, cfg.nc, cfg.img_size, cfg.img_size, device=self.device, requires_grad=True)
        y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=self.device)
        opt = torch.optim.Adam([x], lr=cfg.lr_g, betas=(0.5, 0.99), **self.kw)
        lim = cfg.img_size // 8
        shifts = torch.randint(-lim, lim + 1, (cfg.g_steps, 2)).tolist()
        flips = (torch.rand(cfg.g_steps) < 0.5).tolist()
        for (dy, dx), flip in zip(shifts, flips):
            xa = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            xa = xa.flip(3) if flip else xa
            t = self.teacher(xa)
            s = self.student(xa)
            loss = (cfg.bn * (self.bn.value() - 0.001 * self.student_bn.value()) + cfg.oh * F.cross_entropy(t, y)
                    - cfg.adv * js_divergence(s, t, T=3.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, self.hi), self.lo)
        return (x.detach() * self.normalize.std + self.normalize.mean)


class BareCMI(BareRound):
    """CMI: a re-initialised G per round, global and local views, BN-input means, projection
    head and a contrastive loss against a memory bank of earlier features."""

    def __init__(self, teacher, student, cfg, device, bank_fill: int):
        super().__init__(teacher, student, cfg, device)
        self.gen = Generator(cfg.nz, cfg.ngf, cfg.img_size, cfg.nc).to(device)
        self.local = RandomResizedCrop((cfg.img_size, cfg.img_size), (0.25, 1.0), flip=True)
        self.means: List[torch.Tensor] = []
        self.on = False
        bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.register_forward_hook(lambda _m, inp, _o: self.means.append(inp[0].float().mean((2, 3))) if self.on
                                    else None)
        dim = sum(m.num_features for m in bns)
        self.head = ProjectionHead(dim, cfg.head_dim).to(device)
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.lr_g, **self.kw)
        self.bank = torch.randn(bank_fill, 2 * dim, device=device)

    def hooks(self, on: bool) -> None:
        super().hooks(on)
        self.on = on

    def feats(self) -> torch.Tensor:
        f, self.means = torch.cat(self.means, 1), []
        return f

    def round(self) -> torch.Tensor:
        cfg = self.cfg
        reinit_generator(self.gen)
        self.gen.train()
        z = torch.randn(cfg.batch_size, cfg.nz, device=self.device, requires_grad=True)
        y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=self.device)
        opt = torch.optim.Adam([{"params": self.gen.parameters()}, {"params": [z]}], lr=cfg.lr_g, betas=(0.5, 0.999),
                               **self.kw)
        n = cfg.batch_size
        for _ in range(cfg.g_steps):
            x = self.gen(z)
            loss = self.inversion_loss(self.augment(x), y)
            glob = self.feats()
            self.teacher(self.normalize(self.local(x)))
            local = self.feats()
            cached = self.bank[torch.randperm(len(self.bank), device=self.device)[:cfg.n_neg]]
            c_local, c_global = cached.chunk(2, dim=1)
            p_local, p_global = self.head(torch.cat([local, c_local, glob, c_global])).chunk(2)
            logits = p_local @ p_global.detach().T / cfg.cr_T
            ce = F.cross_entropy(logits, torch.arange(len(logits), device=self.device), reduction="none")
            loss = loss + cfg.cr * (ce[:n].mean() + ce[n:].mean())
            opt.zero_grad(set_to_none=True)
            self.head_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.head_opt.step()
        self.bank = torch.cat([self.bank[n:], torch.cat([local, glob], 1).detach()])
        return x


class BareGenerative(BareRound):
    """DAFL / ZSKT / DFAD / DFQ: g_steps generator steps on fresh z, no augmentation."""

    def __init__(self, teacher, student, cfg, device, l1: bool):
        super().__init__(teacher, student, cfg, device)
        self.gen = Generator(cfg.nz, cfg.ngf, cfg.img_size, cfg.nc).to(device)
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999), **self.kw)
        self.l1 = l1
        self.feat = None
        if cfg.act > 0:
            linear = [m for m in teacher.modules() if isinstance(m, nn.Linear)][-1]
            linear.register_forward_hook(lambda _m, inp, _o: setattr(self, "feat", inp[0]))

    def round(self) -> torch.Tensor:
        cfg = self.cfg
        self.gen.train()
        for _ in range(cfg.g_steps):
            x = self.gen(torch.randn(cfg.batch_size, cfg.nz, device=self.device))
            xn = self.normalize(x)
            t = self.teacher(xn)
            loss = torch.zeros((), device=self.device)
            if cfg.bn > 0:
                loss = loss + cfg.bn * self.bn.value()
            if cfg.oh > 0:
                loss = loss + cfg.oh * F.cross_entropy(t, t.argmax(1))
            if cfg.adv > 0:
                s = self.student(xn)
                loss = loss - cfg.adv * (F.l1_loss(s, t) if self.l1 else kd_kl_div(s, t, 1.0))
            if cfg.balance > 0:
                loss = loss + cfg.balance * balance_loss(t)
            if cfg.act > 0:
                loss = loss - cfg.act * self.feat.abs().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return x

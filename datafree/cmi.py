"""``cmi``: Contrastive Model Inversion (Fang et al., IJCAI-21; zju-vipa/CMI and Fast-Datafree
``datafree/synthesis/contrastive.py``).

Each round re-initialises a generator (weights N(0, 0.02), BN scales N(1, 0.02)) and trains it
with a fresh z for ``g_steps`` by Adam{G, z} (lr_g, betas (0.5, 0.999)) on

    L = L_inv + cr * L_cr,   L_inv = bn * L_bn + oh * CE(t, y) + adv * masked adversarial KL

computed on a global view (crop with padding 4 + flip). Unlike fast / fast_meta, the
adversarial term acts from the first round: CMI has no warm-up gate (notes §1.1). For L_cr the
teacher also sees a local view (RandomResizedCrop, scale 0.25-1, + flip); the features h are the
concatenated spatial means of the inputs of every teacher BN layer, or of the taps the teacher
declares in ``cmi_taps`` (the registry's ResNet-34: the inputs of ``layer1..layer4``, as the
reference driver picks), or of ``cmi_layers`` when given; a projection head
(Linear(d, d) - ReLU - Linear(d, 256) - L2-normalise, its own persistent Adam(lr_g)) maps
[local; cached local] and [global; cached global] to unit vectors, and L_cr is the
cross-entropy of local-vs-global similarities / cr_T with the matching index as label,
averaged separately over the current batch and the cached negatives. The memory bank (40,960
entries of [local || global], 4,096 drawn per step) lives on the device here (the reference
keeps it on the CPU). The lowest-loss batch and its features join the pool and the bank.

Fix of a reference bug (notes §6 item 7): ``cr = 0`` works (the reference raises NameError).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from datafree.base import BestBatch, Synthesizer, SynthesisConfig
from datafree.generator import Generator
from engine.data import RandomResizedCrop
from engine.hooks import parse_tap, resolve_module
from engine.utils import at_least_fp32


class ProjectionHead(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class MemoryBank:
    """A ring buffer of feature vectors on the device; ``sample(k)`` draws without replacement."""

    def __init__(self, size: int, dim: int, device: torch.device):
        self.data = torch.zeros(size, dim, device=device)
        self.ptr, self.count = 0, 0

    def add(self, feats: torch.Tensor) -> None:
        n = feats.shape[0]
        idx = (self.ptr + torch.arange(n, device=self.data.device)) % len(self.data)
        self.data[idx] = feats.detach()
        self.ptr = (self.ptr + n) % len(self.data)
        self.count = min(self.count + n, len(self.data))

    def sample(self, k: int) -> torch.Tensor:
        k = min(k, self.count)
        return self.data[torch.randperm(self.count, device=self.data.device)[:k]]


def reinit_generator(g: nn.Module) -> None:
    """CMI's per-round reset: conv/linear weights N(0, 0.02), BN scale N(1, 0.02), biases 0."""
    for m in g.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class CMISynthesizer(Synthesizer):
    adv_warmup = False  # the adversarial term from the first round
    RANK_STATE = Synthesizer.RANK_STATE | {"bank"}  # torchrun: each rank contrasts with its own bank
    reads = frozenset({"nz", "ngf", "cr", "cr_T", "cmi_layers", "balanced_targets", "keep"})

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: SynthesisConfig, device: torch.device):
        super().__init__(teacher, student, cfg, device)
        self.cr, self.cr_T, self.n_neg = cfg.cr, cfg.cr_T, cfg.n_neg
        self.generator = self.prepare_generator(Generator(cfg.nz, cfg.ngf, cfg.img_size, cfg.nc))
        self.global_view = self.augment
        self.local_view = RandomResizedCrop((cfg.img_size, cfg.img_size), (0.25, 1.0), cfg.flip)
        self._means = {}
        self._hooks_on = True  # off in KD steps (set_hooks), on for the probe forward below
        layers = cfg.cmi_layers or getattr(teacher, "cmi_taps", None)
        if layers:
            taps = [(spec,) + parse_tap(spec) for spec in layers]
            modules = [(spec, resolve_module(teacher, path), side) for spec, path, side in taps]
        else:
            modules = [(n, m, "in") for n, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
        self._handles = [m.register_forward_hook(self._mean_hook(n, side)) for n, m, side in modules]
        self._order = [n for n, _, _ in modules]
        with torch.no_grad():
            teacher(torch.zeros(1, cfg.nc, cfg.img_size, cfg.img_size, device=self.device))
        dim = self.features().shape[1]
        self.head = ProjectionHead(dim, cfg.head_dim).to(self.device)
        self.head_optimizer = self.adam(self.head.parameters(), cfg.lr_g, (0.9, 0.999))
        self.bank = MemoryBank(cfg.bank_size, 2 * dim, self.device)
        self._hooks_on = False

    def _mean_hook(self, name: str, side: str):
        def hook(_m, inputs, output):
            if not self._hooks_on:
                return
            self._means[name] = at_least_fp32(inputs[0] if side == "in" else output).mean(dim=(2, 3))

        return hook

    def set_hooks(self, enabled: bool) -> None:
        super().set_hooks(enabled)
        self._hooks_on = enabled

    def features(self) -> torch.Tensor:
        return torch.cat([self._means[n] for n in self._order], dim=1)

    def contrastive_loss(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        n = local.shape[0]
        cached = self.bank.sample(self.n_neg)
        c_local, c_global = cached.chunk(2, dim=1) if len(cached) else (local[:0], glob[:0])
        proj = self.head(torch.cat([local, c_local, glob, c_global]))
        p_local, p_global = proj.chunk(2)
        logits = p_local @ p_global.detach().T / self.cr_T
        ce = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
        return ce[:n].mean() + ce[n:].mean() if len(cached) else ce.mean()

    def synthesize(self, epoch: int) -> Dict[str, float]:
        cfg = self.cfg
        with self.synthesis() as timer:
            reinit_generator(self.generator)
            self.generator.train()
            z = self.noise(cfg.batch_size, cfg.nz).requires_grad_(True)
            targets = self.sample_classes(cfg.batch_size).sort()[0]
            opt = self.adam([{"params": self.generator.parameters()}, {"params": [z]}], cfg.lr_g, (0.5, 0.999))
            best, losses = BestBatch(cfg.keep), {}
            for _ in self.inner_steps(range(cfg.g_steps)):
                with self.autocast():
                    x = self.generator(z)
                    losses = self.inversion_losses(self.global_view(x), targets, epoch)
                glob = self.features()
                local = None
                if self.cr > 0:
                    with self.autocast():
                        self.teacher(self.normalize(self.local_view(x)))
                    local = self.features()
                    losses["cr"] = self.cr * self.contrastive_loss(local, glob)
                loss = sum(losses.values())
                best.update(loss, x, torch.cat([local if local is not None else glob, glob], dim=1))
                opt.zero_grad(set_to_none=True)
                self.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.sync_grads(list(self.generator.parameters()) + list(self.head.parameters()), [z])
                opt.step()
                self.head_optimizer.step()
            images, feats = best.tensors
            self.pool.add(images)
            self.bank.add(feats)
            self.last_images = images
        out = {"syn_time": timer.elapsed, "syn_loss": best.loss.item()}
        out.update({f"syn_{k}": v.item() for k, v in losses.items()})
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "head": self.head.state_dict(),
                "head_optimizer": self.head_optimizer.state_dict(),
                "bank": {"data": self.bank.data, "ptr": self.bank.ptr, "count": self.bank.count}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.data = state["bank"]["data"].to(self.device)
        self.bank.ptr, self.bank.count = state["bank"]["ptr"], state["bank"]["count"]

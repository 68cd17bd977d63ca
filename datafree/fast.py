"""``fast``: Fast-Datafree's synthesizer without meta-learning (zju-vipa/Fast-Datafree
``datafree/synthesis/fast.py``).

A persistent generator G and a fresh learnable latent batch z per round are trained in place
for ``g_steps`` by Adam{G: lr_g, z: lr_z}, betas (0.5, 0.999), re-created every round (its
state resets, the weights carry over), on ``bn * L_bn + oh * CE + adv * L_adv``. The
lowest-loss batch of the round joins the pool; the BN-statistics EMA is updated after it.

Deviation: the lowest-loss batch is kept on the device (:class:`datafree.base.BestBatch`)
instead of by a ``loss.item()`` per step (no host sync in the inner loop; same selection).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from datafree.base import BestBatch, Synthesizer, SynthesisConfig, build_generator


class FastSynthesizer(Synthesizer):
    generator_runs_inner_loop = True  # fast_meta runs its inner loop on a copy instead
    reads = frozenset({"nz", "ngf", "lr_z", "bn_mmt", "reset_l0", "reset_bn", "reset_epoch", "balanced_targets",
                       "generator", "keep"})

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: SynthesisConfig, device: torch.device):
        super().__init__(teacher, student, cfg, device)
        self.generator = self.prepare_generator(build_generator(cfg), compile=self.generator_runs_inner_loop)

    def new_latent(self) -> torch.Tensor:
        shape = self.generator.latent_shape(self.cfg.batch_size)
        return self.noise(*shape).requires_grad_(True)

    def inner_loop(self, generator: nn.Module, z: torch.Tensor, targets: torch.Tensor, epoch: int,
                   after_backward: Optional[Callable[[int], None]] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """``g_steps`` of Adam on (generator, z). Returns the lowest-loss images in [0, 1] (the
        last step's with ``keep='last'``), that loss, and the last step's named losses.
        ``after_backward(k)`` runs after the k-th backward pass, before the optimiser step
        (where the meta-gradient is read)."""
        cfg = self.cfg
        opt = self.adam([{"params": generator.parameters()}, {"params": [z], "lr": cfg.lr_z}], cfg.lr_g, (0.5, 0.999))
        best, losses = BestBatch(cfg.keep), {}
        for k in self.inner_steps(range(cfg.g_steps)):
            with self.autocast():
                x = generator(z)
                losses = self.inversion_losses(self.augment(x), targets, epoch)
            loss = sum(losses.values())
            best.update(loss, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self.sync_grads(generator.parameters(), [z])  # torchrun: the global batch's gradients
            if after_backward is not None:
                after_backward(k)
            opt.step()
        return best.tensors[0], best.loss, losses

    def maybe_reset(self, epoch: int) -> None:
        if self.reset_due(epoch):
            if self.cfg.reset_l0:
                self.generator.reset_l0()
            if self.cfg.reset_bn:
                self.generator.reset_bn()

    def run_round(self, z: torch.Tensor, targets: torch.Tensor, epoch: int):
        self.generator.train()
        return self.inner_loop(self.generator, z, targets, epoch)

    def latents(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """A fresh learnable latent batch and its targets for this round."""
        y = self.sample_classes(self.cfg.batch_size)
        return self.new_latent(), y

    def synthesize(self, epoch: int) -> Dict[str, float]:
        with self.synthesis() as timer:
            self.maybe_reset(epoch)
            z, targets = self.latents(epoch)
            best_x, best_loss, losses = self.run_round(z, targets, epoch)
            if self.bn_loss is not None and self.cfg.bn_mmt > 0:
                self.bn_loss.update_momentum()
            self.pool.add(best_x)
            self.last_images = best_x
        out = {"syn_time": timer.elapsed, "syn_loss": best_loss.item()}
        out.update({f"syn_{k}": v.item() for k, v in losses.items()})
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])

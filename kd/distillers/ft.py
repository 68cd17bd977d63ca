"""FT: factor transfer (Kim et al., "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018, Eq. 1-3; RepDistiller ``distiller_zoo/FT.py``,
``models/util.py::Paraphraser/Translator``, ``helper/pretrain.py::init``).

Two stages, as RepDistiller runs it:

* **init stage** (``--init_epochs``, 30 in RD): a paraphraser autoencoder on the teacher's last
  stage output (tap group ``last_stage``, RD's ``feat[-2]``) is trained to reconstruct it,
  ``MSE(decoder(encoder(f_t)), f_t)`` (unweighted, as RD's ``init``). Encoder: three 3x3 convs
  C -> C -> kC -> kC, decoder: three 3x3 transposed convs kC -> kC -> C -> C, each followed by
  LeakyReLU(0.1), no BatchNorm; paraphrase rate k = 0.5 (``--ft_k``). Its lr is 0.01 for CIFAR
  ResNet and WRN students (RD's ``pretrain.py`` list: resnet8..110, resnet8x4, resnet32x4,
  wrn_*), else the main lr; no schedule.
* **main stage**: a translator on the student's last stage (three 3x3 convs C_s -> C_s -> kC_t
  -> kC_t, each with BatchNorm and LeakyReLU(0.1)) is trained with the student; the
  paraphraser is frozen in eval mode (saved in checkpoints). The loss, with factors
  ``factor_s = translator(f_s)`` and ``factor_t = encoder(f_t)`` (the larger pooled to the
  smaller spatial size), is

      L_ft = mean |q(factor_s) - q(factor_t)|,   q(f) = normalize(flatten(mean_c f^2))

  (channel mean of the square, flattened over positions, L2-normalised per sample; RD's
  ``FactorTransfer`` with p1 = 2, p2 = 1), weighted by ``-b``.

Defaults: RD ``scripts/run_cifar_distill.sh`` ``--distill factor -r 1 -a 0 -b 200``. The paper
normalises the flattened factor itself; RD's attention-like ``q`` is followed here (the Zoo's
variant is the paper's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers.base import Distiller, InitStage, StageObjective, Weights, option
from kd.distillers.registry import register_distiller
from registry.models.resnet_cifar import CifarResNet
from registry.models.wrn import WideResNet

INIT_LR_SMALL = 0.01  # RD pretrain.py: FT's init lr for ResNet/WRN students
SMALL_INIT_LR_CLASSES = (CifarResNet, WideResNet)  # exactly these classes: RD's own models


def _conv_chain(widths: Sequence[int], transposed: bool = False, batch_norm: bool = False) -> nn.Sequential:
    """3x3 (transposed) convs ``widths[0] -> widths[1] -> ...``, each + [BN] + LeakyReLU(0.1)."""
    layers: List[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def factor_channels(t_channels: int, k: float) -> int:
    return int(t_channels * k)


class Paraphraser(nn.Module):
    """Autoencoder of the teacher's feature map; its encoder output is the teacher factor."""

    def __init__(self, t_shape: Sequence[int], k: float = 0.5, batch_norm: bool = False):
        super().__init__()
        c, kc = t_shape[1], factor_channels(t_shape[1], k)
        self.encoder = _conv_chain([c, c, kc, kc], batch_norm=batch_norm)
        self.decoder = _conv_chain([kc, kc, c, c], transposed=True, batch_norm=batch_norm)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``f``."""
        return self.decoder(self.encoder(f))


class Translator(nn.Module):
    """Maps the student's feature map to a factor of the teacher factor's width."""

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], k: float = 0.5, batch_norm: bool = True):
        super().__init__()
        c, kc = s_shape[1], factor_channels(t_shape[1], k)
        self.encoder = _conv_chain([c, c, kc, kc], batch_norm=batch_norm)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)


def factor_code(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``normalize(flatten(mean_c f^p))``: one L2-normalised vector over positions per sample."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``mean |q(factor_s) - q(factor_t)|`` (the larger map pooled to the smaller first)."""
    if factor_s.shape[2:] != factor_t.shape[2:]:
        if factor_s.shape[2] > factor_t.shape[2]:
            factor_s = F.adaptive_avg_pool2d(factor_s, factor_t.shape[2:])
        else:
            factor_t = F.adaptive_avg_pool2d(factor_t, factor_s.shape[2:])
    return (factor_code(factor_s, p) - factor_code(factor_t, p)).abs().mean()


def paraphraser_loss(paraphraser: Paraphraser, f_t: torch.Tensor) -> torch.Tensor:
    """The init stage's reconstruction loss ``MSE(paraphraser(f_t), f_t)``."""
    return F.mse_loss(paraphraser(f_t), f_t)


@register_distiller("ft", "factor")
class FactorTransfer(Distiller):
    taps = ("last_stage",)
    weights = Weights(r=1.0, a=0.0, b=200.0)

    @dataclass
    class Options:
        ft_k: float = option(0.5, "FT: paraphrase rate k (factor channels = k x teacher channels)")

    def setup(self) -> None:
        s_shape, t_shape = self.s_shape("last_stage")[0], self.t_shape("last_stage")[0]
        if factor_channels(t_shape[1], self.opts.ft_k) < 1:
            raise ValueError(f"ft: --ft_k {self.opts.ft_k} leaves no factor channel for a teacher map of "
                             f"{t_shape[1]} channels")
        self.paraphraser = Paraphraser(t_shape, self.opts.ft_k)
        self.translator = Translator(s_shape, t_shape, self.opts.ft_k)

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"translator": self.translator, "paraphraser": self.paraphraser}

    def frozen_modules(self) -> Iterable[nn.Module]:
        return (*super().frozen_modules(), self.paraphraser)

    def method_losses(self, out) -> Dict[str, torch.Tensor]:
        factor_s = self.translator(out.s_feats("last_stage")[0])
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(out.t_feats("last_stage")[0])
        return {"ft": ft_loss(factor_s, factor_t)}

    def init_loss(self, batch) -> Dict[str, torch.Tensor]:
        """The init stage's objective on one batch: ``{"ft_rec": reconstruction MSE}`` (no student forward)."""
        x = self.unpack(batch)[0]
        _, t_feats = Distiller.teacher_forward(self, x)
        return {"ft_rec": paraphraser_loss(self.paraphraser, t_feats[self.t_groups["last_stage"][0]])}

    def init_lr(self) -> Optional[float]:
        """RD's rule: 0.01 for CIFAR ResNet / WRN students, else the main lr (None)."""
        return INIT_LR_SMALL if type(self.student) in SMALL_INIT_LR_CLASSES else None

    def init_stage(self, epochs: int) -> Optional[InitStage]:
        self.paraphraser.requires_grad_(True)
        objective = StageObjective(self.student, self.teacher, {"paraphraser": self.paraphraser}, self.init_loss)
        return InitStage("ft_init", objective, epochs, lr=self.init_lr())

    def describe(self) -> str:
        lr = self.init_lr()
        return (super().describe() + " [two stages as RD: init = paraphraser reconstruction of the teacher's "
                f"last stage (lr {lr if lr is not None else 'main'}); main = r*CE + a*KD + b*FT, "
                "paraphraser frozen]")

"""VID: variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, "Variational
Information Distillation for Knowledge Transfer", CVPR 2019: maximise a variational lower bound
of the teacher/student mutual information with a Gaussian ``q(t | s)`` whose mean is a
regressor of the student feature and whose per-channel variance is learned, i.e. minimise the
Gaussian negative log-likelihood without its constant). Reference: RepDistiller
``distiller_zoo/VID.py`` (the authors' code) and its wiring in ``train_student.py``

For each pair of stage outputs (``feat[1:-1]``, in order, truncated to the shorter list) the
larger map is adaptive-average-pooled to the smaller; the mean ``mu`` is a 1x1-conv regressor
``conv(Cs->Ct) - ReLU - conv(Ct->Ct) - ReLU - conv(Ct->Ct)`` without biases (middle width =
teacher channels, as RepDistiller builds ``VIDLoss(s, t, t)``); the variance is
``softplus(log_scale) + 1e-5`` per teacher channel, ``log_scale`` initialised to
``log(exp(5.0 - 1e-5) - 1)`` so the variance starts at exactly 5.0 (``--vid_init_var``). The
loss is ``mean(0.5 * ((mu - f_t)^2 / var + log var))`` over all elements, summed over pairs.
The regressors and log-scales are trainable extra modules (``extra_modules()['vid']``),
optimised with the student (mdistiller keeps its log-scales in a plain list, so they are
never trained; not copied).

Defaults are RepDistiller's script ``-r 1 -a 0 -b 1``. ``F.softplus`` is the numerically
stable form of RepDistiller's ``log(1 + exp(x))`` (equal up to rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs, Weights, option
from kd.distillers.registry import register_distiller

VID_EPS = 1e-5


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VIDRegressor(nn.Module):
    """Mean regressor and per-channel variance of VID's Gaussian for one stage pair."""

    def __init__(self, s_channels: int, t_channels: int, init_var: float = 5.0, eps: float = VID_EPS):
        super().__init__()
        self.mean = nn.Sequential(_conv1x1(s_channels, t_channels), nn.ReLU(),
                                  _conv1x1(t_channels, t_channels), nn.ReLU(),
                                  _conv1x1(t_channels, t_channels))
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        """``softplus(log_scale) + eps``, one value per teacher channel."""
        return F.softplus(self.log_scale) + self.eps


def gaussian_nll(pred_mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``mean(0.5 * ((mu - t)^2 / var + log var))`` with one variance per channel (dim 1)."""
    var = variance.view(1, -1, 1, 1).to(pred_mean.dtype)
    return (0.5 * ((pred_mean - target).pow(2) / var + torch.log(var))).mean()


def vid_loss(regressor: VIDRegressor, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """VID loss of one stage pair (the larger map pooled to the smaller first)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_t.shape[2] > f_s.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return gaussian_nll(regressor.mean(f_s), f_t, regressor.variance())


@register_distiller("vid")
class VID(Distiller):
    taps = ("stages",)
    weights = Weights(r=1.0, a=0.0, b=1.0)

    @dataclass
    class Options:
        vid_init_var: float = option(5.0, "VID: initial value of the learned per-channel variance")

    def setup(self) -> None:
        self.vid_regressors = nn.ModuleList(
            VIDRegressor(s[1], t[1], self.opts.vid_init_var)
            for s, t in zip(self.s_shape("stages"), self.t_shape("stages")))

    def extra_modules(self) -> Dict[str, nn.Module]:
        return {"vid": self.vid_regressors}

    def method_losses(self, out: Outputs) -> Dict[str, torch.Tensor]:
        triples = zip(self.vid_regressors, out.s_feats("stages"), out.t_feats("stages"))
        return {"vid": sum(vid_loss(reg, fs, ft) for reg, fs, ft in triples)}

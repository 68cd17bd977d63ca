"""Small trainable modules several distillers share (RepDistiller ``models/util.py`` semantics).

* :class:`ConvReg`: FitNet's convolutional regressor from a student feature map to the
  teacher's shape: a stride-2 3x3 conv when the student map is twice as large, a stride-2
  4x4 transposed conv when it is half as large, else a valid conv of kernel
  ``1 + s - t``; then BatchNorm and (optionally) ReLU.
* :class:`Embed`: flatten, Linear, L2-normalise (CRD's and MLKD's embedding heads).
* :class:`LinearEmbed`: flatten, Linear (CC's embedding).
* :func:`student_feature_modules`: RepDistiller's ``get_feat_modules()`` for any tapped model
  (what the init stages of AB, FSP and the paper's FitNet train).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.hooks import parse_tap


class ConvReg(nn.Module):
    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"ConvReg: cannot regress a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class LinearEmbed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def classifier_path(model: nn.Module) -> Optional[str]:
    """Dotted name of the model's classifier: the module whose input is the ``pool`` tap, else
    the last ``nn.Linear``; ``None`` when there is neither."""
    taps = getattr(model, "feature_taps", None)
    if taps and "pool" in taps:
        path, side = parse_tap(taps["pool"])
        if side == "in" and path:
            return path
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def student_feature_modules(model: nn.Module) -> nn.ModuleList:
    """Every top-most sub-module of ``model`` that does not contain its classifier (RD's
    ``get_feat_modules()``): what an init stage on features trains."""
    head = classifier_path(model)
    if head is None:
        return nn.ModuleList([model])

    def keep(module: nn.Module, prefix: str) -> Iterable[nn.Module]:
        for name, child in module.named_children():
            path = prefix + name
            if path == head:
                continue
            if head.startswith(path + "."):
                yield from keep(child, path + ".")
            else:
                yield child

    return nn.ModuleList(list(keep(model, "")))

"""LeNet-5 and LeNet-5-half for 1x32x32 digits, plus BatchNorm variants.

LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998;
the half-width student is from Chen et al., "Data-Free Learning of Student Networks" (DAFL),
ICCV 2019. Architecture as in DAFL's ``lenet.py`` (copied into Fast-Datafree
``classifiers/lenet.py``): conv5x5(6) - ReLU - maxpool2 - conv5x5(16) - ReLU - maxpool2 -
conv5x5(120) - ReLU - fc(84) - ReLU - fc(num_classes); the half net uses 3/8/60/42. Convs
have biases, no padding; PyTorch default init. Parameter names match the reference
(``features.*``, ``fc.*``), so its checkpoints load unchanged.

Additions and deviations:

* ``lenet5_bn`` / ``lenet5_half_bn`` (not in the references) put a BatchNorm2d after each conv
  (convs then drop their redundant bias) and a BatchNorm1d after fc(84): data-free synthesis
  by BN-statistics matching needs a teacher with BatchNorm;
* the ReLUs after the convs are not in-place so hooks can read their inputs; ``in_chans``
  (default 1) sets the first conv's input channels.

Taps: ``stem`` = first conv's ReLU output, ``stage1`` / ``stage2`` = second / third conv's
ReLU output, ``preactK`` = the same tensors before their ReLU, ``pool`` = input of the last
Linear (the 84- or 42-d hidden feature).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import make_taps

_FULL = (6, 16, 120, 84)
_HALF = (3, 8, 60, 42)


class LeNet5(nn.Module):
    def __init__(self, widths: Sequence[int] = _FULL, num_classes: int = 10, in_chans: int = 1,
                 batch_norm: bool = False):
        super().__init__()
        layers: List[nn.Module] = []
        relus: List[int] = []
        cin = in_chans
        for i, cout in enumerate(widths[:3]):
            layers.append(nn.Conv2d(cin, cout, 5, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            relus.append(len(layers))
            layers.append(nn.ReLU())  # tapped: not in-place
            if i < 2:
                layers.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.features = nn.Sequential(*layers)
        hidden = widths[3]
        head: List[nn.Module] = [nn.Linear(widths[2], hidden)]
        if batch_norm:
            head.append(nn.BatchNorm1d(hidden))
        head += [nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
        self.fc = nn.Sequential(*head)
        r = [f"features.{i}" for i in relus]
        self.feature_taps = make_taps(r[0], r[1:], [f"{t}:in" for t in r[1:]],
                                      f"fc.{len(head) - 1}:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@register_model("lenet5", "LeNet5")
def lenet5(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """DAFL LeNet-5 (6/16/120/84)."""
    return LeNet5(_FULL, num_classes, in_chans)


@register_model("lenet5_half", "LeNet5Half")
def lenet5_half(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """DAFL LeNet-5-half (3/8/60/42)."""
    return LeNet5(_HALF, num_classes, in_chans)


@register_model("lenet5_bn")
def lenet5_bn(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """LeNet-5 with BatchNorm after every conv and after fc(84)."""
    return LeNet5(_FULL, num_classes, in_chans, batch_norm=True)


@register_model("lenet5_half_bn")
def lenet5_half_bn(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """LeNet-5-half with BatchNorm after every conv and after fc(42)."""
    return LeNet5(_HALF, num_classes, in_chans, batch_norm=True)

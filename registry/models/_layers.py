"""Pieces shared by several model families: tap tables, weight init, the residual
``BasicBlock`` of the CIFAR ResNets and the ShuffleNet channel shuffle.

Hook convention (see :mod:`engine.hooks`): the ReLU that ends a tapped block or stage is a
named, non-inplace ``nn.ReLU`` so that ``"...act:in"`` reads the pre-activation and
``"...act"`` the post-activation tensor. ReLUs that no tap reads may stay in-place.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn


def make_taps(stem: Optional[str], stages: Sequence[str], preacts: Sequence[str],
              pool: str) -> "OrderedDict[str, str]":
    """The standard tap table: ``stem``, ``stage1..N``, ``preact1..N``, ``pool``."""
    if len(stages) != len(preacts):
        raise ValueError("one preact tap per stage")
    taps: "OrderedDict[str, str]" = OrderedDict()
    if stem is not None:
        taps["stem"] = stem
    for i, spec in enumerate(stages, 1):
        taps[f"stage{i}"] = spec
    for i, spec in enumerate(preacts, 1):
        taps[f"preact{i}"] = spec
    taps["pool"] = pool
    return taps


def init_weights(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """He init of every conv from its fan-out (RepDistiller's ``normal_(0, sqrt(2/n))`` with
    ``n = k*k*out_channels``; conv biases zeroed), BatchNorm to identity, Linear biases
    zeroed and, when ``linear_std`` is given, Linear weights drawn from N(0, linear_std)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def projection(cin: int, cout: int, stride: int) -> Optional[nn.Sequential]:
    """1x1 conv + BN shortcut when shape changes, else ``None`` (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Post-activation residual block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ``act``.

    ``shortcut_name`` only picks the attribute that holds the projection, so state dicts
    match the reference code bases (``downsample`` in RepDistiller ``resnet.py``,
    ``shortcut`` in ``resnetv2.py`` / Fast-Datafree ``resnet.py``).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, projection(in_planes, planes, stride))
        self.act = nn.ReLU()  # tapped: input is the block's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        proj = getattr(self, self.shortcut_name)
        return self.act(out + (x if proj is None else proj(x)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: (N, g*c, H, W) -> interleave the g groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

"""CIFAR ResNets: ResNet-8/14/20/32/44/56/110 and the 4x-wide ResNet-8x4 / ResNet-32x4.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (section 4.2, the
6n+2 CIFAR networks). Architecture as in RepDistiller ``models/resnet.py`` (also Fast-Datafree
``classifiers/resnet_tiny.py``): 3x3 stem conv-BN-ReLU, three stages of (depth-2)/6
``BasicBlock``s with widths 16, 32, 64 (x4 variants: stem 32, stages 64, 128, 256), strides
1, 2, 2, 1x1-conv+BN projection shortcuts, global average pooling, ``fc``; Kaiming fan-out
init. Module names follow the reference (``downsample``), so its checkpoints load unchanged.
Distiller (karanchahal/distiller ``models/cifar10sm/resnet.py``, factory names ``resnet8_sm`` ..
``resnet110_sm``) has the same layout and function, so those names are aliases here
(Distiller's plain ``resnet8`` etc. are different networks: ``kc_resnet8`` in
:mod:`registry.models.distiller_cifar`).

Deliberate deviations: each block ends in a named non-inplace ``act`` ReLU (the reference
calls ``F.relu``) so hooks can read the pre-activation; adaptive average pooling instead of
``AvgPool2d(8)`` (identical at 32x32).

Taps match RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` = stem ReLU output,
``stageK`` = ``layerK`` output, ``preactK`` = the last block's sum before its ReLU, ``pool`` =
input of ``fc``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import BasicBlock, conv3x3, init_weights, make_taps


def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                      shortcut_name="downsample") for i in range(n)])


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 10,
                 in_chans: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(widths[0], widths[1], n, 1)
        self.layer2 = _stage(widths[1], widths[2], n, 2)
        self.layer3 = _stage(widths[2], widths[3], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)
        self.feature_taps = make_taps(
            "relu", [f"layer{i}" for i in (1, 2, 3)],
            [f"layer{i}.{n - 1}.act:in" for i in (1, 2, 3)], "fc:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: Sequence[int], *aliases: str) -> None:
    @register_model(name, *aliases)
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth}, widths {tuple(widths)} (RepDistiller resnet.py)."


for _d in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_d}", _d, _THIN, f"resnet{_d}_sm")
_register("resnet8x4", 8, _WIDE)
_register("resnet32x4", 32, _WIDE)

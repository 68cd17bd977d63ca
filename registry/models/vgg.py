"""VGG-8/11/13/16/19 with BatchNorm for 32x32 inputs (classifier reduced to one Linear).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. Architecture as in RepDistiller ``models/vgg.py`` (the ``*_bn`` builders, which
both RepDistiller and Fast-Datafree register as ``vggN``): five blocks of 3x3 conv (with
bias) + BN + ReLU, max-pool 2x2 after blocks 0-2 (after block 3 only for 64-pixel inputs,
as in the reference), global average pooling, ``classifier = Linear(512, num_classes)``;
conv He fan-out init, Linear N(0, 0.01). Configurations (convs per block): vgg8 1-1-1-1-1,
vgg11 1-1-2-2-2, vgg13 2-2-2-2-2, vgg16 2-2-3-3-3, vgg19 2-2-4-4-4; widths 64, 128, 256,
512, 512. Parameter names match the reference, so its checkpoints load unchanged.

Deliberate deviation: each block ends with its own non-inplace ReLU (the reference applies
``F.relu`` after the block), appended last in the block's ``Sequential`` so parameter
indices are unchanged; block outputs are therefore post-activation.

Taps match RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` = block0 output,
``stageK`` = blockK output, ``preactK`` = its last BatchNorm output, ``pool`` = input of
``classifier``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import init_weights, make_taps

_CONVS_PER_BLOCK: Dict[str, Sequence[int]] = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_WIDTHS = (64, 128, 256, 512, 512)


def _block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=i < n - 1)]  # the last ReLU is tapped: not in-place
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, convs: Sequence[int], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        cins = (in_chans,) + _WIDTHS[:-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(ci, co, n) for ci, co, n in zip(cins, _WIDTHS, convs))
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(_WIDTHS[-1], num_classes)
        init_weights(self, linear_std=0.01)
        self.feature_taps = make_taps(
            "block0", [f"block{k}" for k in (1, 2, 3, 4)],
            [f"block{k}.{3 * convs[k] - 1}:in" for k in (1, 2, 3, 4)], "classifier:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if h == 64:  # RepDistiller pools a fourth time only for 64x64 (Tiny-ImageNet) inputs
            x = self.pool3(x)
        x = self.pool4(self.block4(x)).flatten(1)
        return self.classifier(x)


def _register(name: str) -> None:
    @register_model(name, f"{name}_bn")
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return VGG(_CONVS_PER_BLOCK[name], num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = f"{name.upper()} with BatchNorm (RepDistiller vgg.py, {name}_bn)."


for _name in _CONVS_PER_BLOCK:
    _register(_name)

"""MobileNetV2 for 32x32 inputs, RepDistiller's ``mobile_half`` (expansion 6, width 0.5) and
``mobile_full`` (width 1.0).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Architecture as in RepDistiller ``models/mobilenetv2.py``: stride-2 3x3 stem conv-BN-ReLU
(``int(32*w)`` channels), seven groups of inverted residuals (t, c, n, s) = (1, 16, 1, 1),
(6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
with ``int(c*w)`` channels (the expansion 1x1 conv is kept even when t = 1), a 1x1 conv to
1280 channels, global average pooling, ``classifier = Sequential(Linear)``; He fan-out conv
init, Linear N(0, 0.01). Module names match the reference, so its checkpoints load unchanged.

``mobile_full``: RepDistiller's later ``models/__init__.py`` lists it beside ``mobile_half``; the
stored copy of its ``mobilenetv2.py`` predates it, so its definition is taken to be the same
builder at width 1.0 (stem 32 channels, head 1280), by analogy with ``mobile_half = (6, 0.5)``.

Not the Fast-Datafree ``mobilenetv2`` (torchvision's width-1.0 net): the registry name
``mobilenetv2`` means RepDistiller's CIFAR net; a Fast-Datafree ``cifar*_mobilenetv2.pth``
(its ``classifiers/mobilenetv2.py`` is torchvision's layout: ``features.*``, ``classifier.1``)
loads into ``mobilenetv2_imagenet``.

Deliberate deviation: adaptive average pooling instead of ``AvgPool2d(2, ceil_mode=True)``
(identical at 32x32).

Taps match RepDistiller's ``forward(is_feat=True)``: ``stem`` = stem output, ``stage1..4`` =
outputs of block groups 1, 2, 4, 6 (linear bottlenecks: not rectified), ``pool`` = input of
the Linear. RepDistiller returns the same tensors for ``preact=True``, so ``preactK`` names the
same tensor as ``stageK``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import init_weights, make_taps

# (expansion t, channels c, repeats n, first stride s); t=None means "the model's expansion"
_SETTING = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
_TAPPED_GROUPS = (1, 2, 4, 6)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise (stride) - 1x1 linear projection; identity residual when
    stride 1 and widths match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 10,
                 in_chans: int = 3):
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, cin, 3, stride=2)
        groups = []
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1,
                                               expansion if t is None else t))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_weights(self, linear_std=0.01)
        stages = [f"blocks.{g}" for g in _TAPPED_GROUPS]
        self.feature_taps = make_taps("conv1", stages, stages, "classifier.0:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.classifier(self.avgpool(self.conv2(x)).flatten(1))


@register_model("mobilenetv2", "MobileNetV2", "mobile_half")
def mobilenetv2(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """RepDistiller ``mobile_half``: MobileNetV2, expansion 6, width 0.5."""
    return MobileNetV2(6, 0.5, num_classes, in_chans)


@register_model("mobile_full")
def mobile_full(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """RepDistiller ``mobile_full``: the same MobileNetV2 at width 1.0 (expansion 6)."""
    return MobileNetV2(6, 1.0, num_classes, in_chans)

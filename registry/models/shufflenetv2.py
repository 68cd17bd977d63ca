"""ShuffleNetV2 (1x) for 32x32 inputs, RepDistiller's ``ShuffleV2``.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018. Architecture as in RepDistiller ``models/ShuffleNetv2.py`` with ``net_size=1``:
1x1 stem conv (24 channels) + BN + ReLU, three stages of one stride-2 down-sampling unit
followed by 3 / 7 / 3 basic units with 116 / 232 / 464 channels, a 1x1 conv to 1024 channels
+ BN + ReLU, global average pooling, ``linear``; PyTorch default init (as the reference).
A basic unit splits the channels in half, keeps the first half and sends the second through
1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU, concatenates and shuffles (2
groups). Module names match the reference, so its checkpoints load unchanged.

Deliberate deviations: the stem and head ReLUs are named modules and each basic unit
applies its last ReLU (``act``, not in-place) to the concatenation ``[kept half, branch]``
instead of to the branch alone. The kept half is the (non-negative) output of earlier
ReLUs, so the forward values are identical, and ``act``'s input is exactly the reference's
``preact`` (unshuffled concatenation). Adaptive average pooling instead of ``avg_pool2d(4)``
(identical at 32x32).

Taps match RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` = stem ReLU output,
``stageK`` = ``layerK`` output, ``preactK`` = the last unit's pre-ReLU concatenation (before
the shuffle, as in the reference), ``pool`` = input of ``linear``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._factory import register_model
from ._layers import channel_shuffle, make_taps

_STEM = 24


def _dw(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)


def _pw(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class BasicUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = _pw(half, half), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = _dw(half, 1), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = _pw(half, half), nn.BatchNorm2d(half)
        self.act = nn.ReLU()  # tapped: input is the unit's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        keep, branch = x[:, :half], x[:, half:]
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(branch))))
        return channel_shuffle(self.act(torch.cat([keep, branch], 1)), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches (depthwise-pointwise, and pointwise-depthwise-pointwise), each
    ending in ReLU, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _dw(cin, 2), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = _pw(cin, mid), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _pw(cin, mid), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = _dw(mid, 2), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = _pw(mid, mid), nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels: Sequence[int] = (116, 232, 464, 1024),
                 num_blocks: Sequence[int] = (3, 7, 3), num_classes: int = 10,
                 in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU(inplace=True)
        cin = _STEM
        stages = []
        for cout, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(DownUnit(cin, cout), *[BasicUnit(cout) for _ in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _pw(cin, out_channels[3])
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.feature_taps = make_taps(
            "relu", [f"layer{i}" for i in (1, 2, 3)],
            [f"layer{i}.{n}.act:in" for i, n in zip((1, 2, 3), num_blocks)], "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("shufflenetv2", "ShuffleV2")
def shufflenetv2(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """RepDistiller ``ShuffleV2`` (net size 1: 116/232/464 channels, 3/7/3 units, 1024 head)."""
    return ShuffleNetV2(num_classes=num_classes, in_chans=in_chans)

"""ShuffleNet (v1) for 32x32 inputs, RepDistiller's ``ShuffleV1`` (groups 3).

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile
Devices", CVPR 2018. Architecture as in RepDistiller ``models/ShuffleNetv1.py``: 1x1 stem
conv (24 channels) + BN + ReLU, three stages of 4 / 8 / 4 bottlenecks with 240 / 480 / 960
output channels. A bottleneck is grouped 1x1 conv (ungrouped on the 24-channel stem) - BN -
ReLU - channel shuffle - 3x3 depthwise (stride) - BN - ReLU - grouped 1x1 conv - BN; the first
block of each stage has stride 2 and concatenates a 3x3 average-pooled shortcut (so its
branch has ``out - in`` channels), the others add the identity. Global average pooling,
``linear``; PyTorch default init (as the reference). Module names match the reference, so its
checkpoints load unchanged.

Deliberate deviations: the stem ReLU (``relu``) and each block's last ReLU (``act``, not
in-place) are named modules so hooks can read them; adaptive average pooling instead of
``avg_pool2d(4)`` (identical at 32x32).

Taps match RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` = stem ReLU output,
``stageK`` = ``layerK`` output, ``preactK`` = the last block's sum before its ReLU, ``pool`` =
input of ``linear``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._factory import register_model
from ._layers import channel_shuffle, make_taps

_STEM = 24


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = cout // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU()  # tapped: input is the block's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.act(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: Sequence[int] = (240, 480, 960),
                 num_blocks: Sequence[int] = (4, 8, 4), groups: int = 3,
                 num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU(inplace=True)
        cin = _STEM
        stages = []
        for s, (cout, n) in enumerate(zip(out_planes, num_blocks)):
            blocks = [ShuffleUnit(cin, cout - cin, 2, groups, 1 if s == 0 else groups)]
            blocks += [ShuffleUnit(cout, cout, 1, groups, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        self.feature_taps = make_taps(
            "relu", [f"layer{i}" for i in (1, 2, 3)],
            [f"layer{i}.{n - 1}.act:in" for i, n in zip((1, 2, 3), num_blocks)], "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("shufflenetv1", "ShuffleV1")
def shufflenetv1(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """RepDistiller ``ShuffleV1``: out planes 240/480/960, blocks 4/8/4, groups 3."""
    return ShuffleNetV1(num_classes=num_classes, in_chans=in_chans)

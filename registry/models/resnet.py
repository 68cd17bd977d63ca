"""CIFAR-style ResNet-18 / 34 / 50: ImageNet widths on 32x32 inputs.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. Architecture as in
RepDistiller ``models/resnetv2.py`` and Fast-Datafree ``classifiers/resnet.py`` (from DAFL):
3x3 stride-1 stem conv-BN-ReLU with no max-pool, four stages of ``BasicBlock`` (18: 2-2-2-2,
34: 3-4-6-3) or ``Bottleneck`` (50: 3-4-6-3, expansion 4) with widths 64, 128, 256, 512 and
strides 1, 2, 2, 2, 1x1-conv+BN projection shortcuts, global average pooling, ``linear``.
Kaiming fan-out init as in RepDistiller (Fast-Datafree keeps PyTorch's default init). Module
names follow both references (``shortcut``, ``linear``), so their checkpoints load unchanged.

Deliberate deviation: the stem ReLU (``relu``) and each block's last ReLU (``act``) are
named modules, ``act`` not in-place, so hooks can read stem output and pre-activations.

Taps match RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` = stem ReLU output,
``stageK`` = ``layerK`` output, ``preactK`` = the last block's sum before its ReLU, ``pool`` =
input of ``linear``.
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import BasicBlock, conv3x3, init_weights, make_taps, projection


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (stride) - 1x1 expand (x4), each with BN, plus shortcut, then ``act``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, out, stride)
        self.act = nn.ReLU()  # tapped: input is the block's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    def __init__(self, block: Block, num_blocks: Sequence[int], num_classes: int = 10,
                 in_chans: int = 3):
        super().__init__()
        self.conv1 = conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        init_weights(self)
        self.feature_taps = make_taps(
            "relu", [f"layer{i}" for i in (1, 2, 3, 4)],
            [f"layer{i}.{n - 1}.act:in" for i, n in zip((1, 2, 3, 4), num_blocks)], "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("resnet18", "ResNet18")
def resnet18(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """ResNet-18, BasicBlock 2-2-2-2."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans)


@register_model("resnet34", "ResNet34")
def resnet34(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """ResNet-34, BasicBlock 3-4-6-3. ``cmi_taps``: CMI's features for this teacher are the
    inputs of ``layer1..layer4`` (the CMI / Fast-Datafree CIFAR driver's choice for ResNet-34), not the inputs of every BN."""
    model = ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans)
    model.cmi_taps = [f"layer{i}:in" for i in (1, 2, 3, 4)]
    return model


@register_model("resnet50", "ResNet50")
def resnet50(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """ResNet-50, Bottleneck 3-4-6-3."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans)

"""He et al.'s CIFAR ResNets with option-A shortcuts, as published by akamaster.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2: the 6n+2
networks with "option A" shortcuts, i.e. identity shortcuts whose stride-2 version subsamples
``x[:, :, ::2, ::2]`` and zero-pads the missing channels (planes // 4 on each side), so the
shortcuts have no parameters. Layout of Yerlan Idelbayev's akamaster/pytorch_resnet_cifar10
``resnet.py`` and its released checkpoints (e.g. ``resnet20-12fca82f.th``): 3x3 stem conv to 16
channels + BN + ReLU, three stages of n post-activation ``BasicBlock``s with 16 / 32 / 64
channels at strides 1 / 2 / 2, global average pooling, ``linear``. Registered as
``resnet{20,32,44,56,110}_a`` (the ``_a`` is for option A; RepDistiller's ``resnet20`` etc. use
1x1-conv projection shortcuts named ``downsample`` and a head named ``fc``).

Normalisation: akamaster trained on CIFAR-10 with the *ImageNet* mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225), not the CIFAR statistics; feed its checkpoints inputs normalised that
way.

Loading its checkpoints: they were saved by an old PyTorch and hold no BatchNorm
``num_batches_tracked`` buffers, which :func:`engine.checkpoint.check_fit` currently reports as
missing keys (``load_state_dict`` itself would fill them with 0).

Deliberate deviations: He fan-out init as the other CIFAR ResNets here (akamaster uses
``kaiming_normal_`` with fan-in on convs and the Linear); named ReLU modules (stem ``relu``,
each block's non-inplace ``act``) so hooks can read them; ``resnet1202`` is not registered.

Taps as the other CIFAR ResNets: ``stem`` = stem ReLU output, ``stageK`` = ``layerK`` output,
``preactK`` = the last block's sum before its ReLU, ``pool`` = input of ``linear``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._factory import register_model

# akamaster trained on CIFAR-10 with the ImageNet statistics (its trainer.py's Normalize)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
from ._layers import conv3x3, init_weights, make_taps


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every second row and column, zero-pad ``pad`` channels on each
    side of the channel axis."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class OptionABlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (option-A) shortcut, then ``act``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        # akamaster: the padded shortcut whenever the stride or the width changes
        self.shortcut = (PadShortcut(planes // 4) if stride != 1 or in_planes != planes
                         else nn.Identity())
        self.act = nn.ReLU()  # tapped: input is the block's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.act(out + self.shortcut(x))


class OptionAResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        cin = 16
        for i, planes in enumerate((16, 32, 64), 1):
            blocks = [OptionABlock(cin if j == 0 else planes, planes,
                                   (1 if i == 1 else 2) if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        init_weights(self)
        self.feature_taps = make_taps(
            "relu", [f"layer{i}" for i in (1, 2, 3)],
            [f"layer{i}.{n - 1}.act:in" for i in (1, 2, 3)], "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


def _register(depth: int) -> None:
    name = f"resnet{depth}_a"

    @register_model(name, normalization=IMAGENET_STATS)
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return OptionAResNet(depth, num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth} with option-A shortcuts (akamaster resnet.py)."


for _d in (20, 32, 44, 56, 110):
    _register(_d)

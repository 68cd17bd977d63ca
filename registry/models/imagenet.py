"""torchvision ImageNet models: ResNet-18/34/50 and MobileNetV2, randomly initialised.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; Sandler et al.,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. Built with
``torchvision.models.X(weights=None, num_classes=...)`` (nothing is downloaded; load
weights with ``engine.checkpoint.load_weights``), as Fast-Datafree's ``*_imagenet`` models
(its ``classifiers/resnet_in.py`` is torchvision's ResNet, so its checkpoints load). Distiller's
``models/vision/resnet.py`` is torchvision's ResNet too: its factory names ``resnet18_v``,
``resnet34_v``, ``resnet50_v`` are aliases of the ResNets here.

Deliberate deviations: with ``in_chans != 3`` the stem conv is replaced (same shape
otherwise, torchvision's He fan-out init); the ReLU of each stage's last residual block is
set to non-inplace so hooks can read its input.

Taps name torchvision's own modules. ResNet: ``stem`` = ``maxpool`` output, ``stageK`` =
``layerK``, ``pool`` = input of ``fc``; ``preactK`` = input of ``layerK[-1].relu``. torchvision's
blocks call that one ``relu`` module two (BasicBlock) or three (Bottleneck) times; a forward
hook keeps the last call, which is the post-addition one, i.e. the block's pre-activation.
MobileNetV2: ``stem`` = ``features.0``, ``stage1..4`` = ``features.3 / 6 / 13 / 17`` (the last
inverted residual at strides 4, 8, 16, 32, as RepDistiller taps its CIFAR MobileNetV2),
``preactK`` = ``stageK`` (linear bottlenecks: no ReLU follows), ``pool`` = input of the
classifier's Dropout (the pooled 1280-d feature; the Linear reads it after dropout).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torchvision

from ._factory import register_model
from ._layers import make_taps


def _stem_conv(old: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                     bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet(builder: Callable[..., nn.Module], num_classes: int, in_chans: int) -> nn.Module:
    model = builder(weights=None, num_classes=num_classes)
    if in_chans != 3:
        model.conv1 = _stem_conv(model.conv1, in_chans)
    preacts = []
    for i in (1, 2, 3, 4):
        last = len(getattr(model, f"layer{i}")) - 1
        getattr(model, f"layer{i}")[last].relu.inplace = False
        preacts.append(f"layer{i}.{last}.relu:in")
    model.feature_taps = make_taps("maxpool", [f"layer{i}" for i in (1, 2, 3, 4)], preacts,
                                   "fc:in")
    return model


@register_model("resnet18_imagenet", "resnet18_v")
def resnet18_imagenet(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """torchvision ResNet-18."""
    return _resnet(torchvision.models.resnet18, num_classes, in_chans)


@register_model("resnet34_imagenet", "resnet34_v")
def resnet34_imagenet(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """torchvision ResNet-34."""
    return _resnet(torchvision.models.resnet34, num_classes, in_chans)


@register_model("resnet50_imagenet", "resnet50_v")
def resnet50_imagenet(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """torchvision ResNet-50."""
    return _resnet(torchvision.models.resnet50, num_classes, in_chans)


@register_model("mobilenetv2_imagenet")
def mobilenetv2_imagenet(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """torchvision MobileNetV2 (width 1.0)."""
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    if in_chans != 3:
        model.features[0][0] = _stem_conv(model.features[0][0], in_chans)
    stages = [f"features.{i}" for i in (3, 6, 13, 17)]
    model.feature_taps = make_taps("features.0", stages, stages, "classifier.0:in")
    return model

"""Distiller's (karanchahal/distiller) own CIFAR networks, in its state-dict layout.

Sources: ``models/cifar10/resnet.py`` (the versions stored at commits 1bfe6cf5 and 8f4e4cf9; they
differ only in dead code), ``models/cifar10/vgg.py`` and the ``resnet*`` / ``vgg*`` entries of
``models/model_factory.py``. These are not RepDistiller's networks of the same name, so they are
registered under ``kc_*`` canonical names; Distiller's spelling is an alias only where no
RepDistiller / Fast-Datafree model uses it (``resnet10``, ``resnet26``). A Distiller
``resnet8`` / ``resnet20`` / ``resnet18`` / ``vgg13`` checkpoint loads into ``kc_resnet8`` /
``kc_resnet20`` / ``kc_resnet18`` / ``kc_vgg13``.

* ``kc_resnet{8,14,20,26,32,44,56}`` (Distiller's ``ResNetSmall``): 3x3 stem conv to **64**
  channels + BN + ReLU, three stages of (depth-2)/6 blocks with 16 / 32 / 64 channels at strides
  1 / 2 / 2 (the first block projects 64 -> 16 with a 1x1 conv + BN), ``AvgPool2d(4)`` on the 8x8
  map, flattened, so ``linear`` reads 64 * 2 * 2 = 256 features. ResNet-8 has 89,322 parameters
  with 10 classes, ResNet-26 380,970 (Distiller's table).
* ``kc_resnet{10,18,34,50}`` (Distiller's ``ResNet``): 64-channel stem, four stages of
  64 / 128 / 256 / 512 (x4 for Bottleneck) at strides 1 / 2 / 2 / 2, ``AvgPool2d(4)``,
  ``linear``. Same parameter names as RepDistiller ``resnetv2.py``, but not the same function
  (next point), hence the separate names. Its ``resnet101`` / ``resnet152`` are not registered
  (same class, deeper; not used by its experiments, and slow to build in the zoo tests).
* In both, a residual block does **not** end in a ReLU (``out = bn2(conv2(relu(bn1(conv1 x))))
  + shortcut(x)``); Distiller's ``forward`` applies a ReLU after the stem and after each *stage*
  only. The blocks inside a stage are therefore chained without a non-linearity between them.
  This is reproduced as is, because Distiller checkpoints were trained that way.
* ``kc_vgg{11,13,16,19}``: ``features`` = the classic configuration list of 3x3 conv (with
  bias) + BN + ReLU and 2x2 max-pools, then ``AvgPool2d(1)`` (a no-op), flattened into
  ``classifier = Linear(512, num_classes)``.

Deliberate deviations: Distiller's ``VGG`` ignores ``num_classes`` and always builds a 10-way
classifier (a bug); here ``num_classes`` is honoured, so a Distiller VGG checkpoint trained on
CIFAR-100 needs ``num_classes=10`` to load. ``in_chans`` sets the stem's input channels.
PyTorch default initialisation, as the reference. The ReLUs that taps read are named,
non-inplace modules (parameter-free, so state-dict names are unchanged).

Taps: ``stem`` = stem ReLU output (VGG: the ReLU before the first pool), ``stageK`` = stage K
after its ReLU (VGG: the ReLU before pool K+1), ``preactK`` = the same tensor before that ReLU
(Distiller's ``use_relu=False`` features), ``pool`` = input of the classifier.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._factory import register_model
from ._layers import conv3x3, make_taps, projection


class KCBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, *no* closing ReLU (Distiller)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.shortcut is None else self.shortcut(x))


class KCBottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (stride)-BN-ReLU, 1x1 (x4)-BN plus shortcut, *no* closing ReLU."""

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
        self.shortcut = projection(in_planes, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + (x if self.shortcut is None else self.shortcut(x))


Block = Union[Type[KCBasicBlock], Type[KCBottleneck]]


class DistillerResNet(nn.Module):
    """Distiller's ``ResNet`` (four stages) and ``ResNetSmall`` (three), by ``widths``."""

    def __init__(self, block: Block, num_blocks: Sequence[int], widths: Sequence[int],
                 num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if len(num_blocks) != len(widths):
            raise ValueError("one width per stage")
        self.num_stages = len(widths)
        self.conv1 = conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        for i, (planes, n) in enumerate(zip(widths, num_blocks), 1):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, (1 if i == 1 else 2) if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            setattr(self, f"act{i}", nn.ReLU())  # tapped: Distiller's per-stage ReLU
        self.avgpool = nn.AvgPool2d(4)
        # 4 stages: 4x4 map -> 1x1; 3 stages: 8x8 map -> 2x2, so 4 * cin features
        self.linear = nn.Linear(cin * (1 if self.num_stages == 4 else 4), num_classes)
        stages = [f"act{i}" for i in range(1, self.num_stages + 1)]
        self.feature_taps = make_taps("relu", stages, [f"{s}:in" for s in stages], "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"layer{i}")(x))
        return self.linear(self.avgpool(x).flatten(1))


_VGG_CFG = {  # convolution widths, "M" = 2x2 max-pool (Distiller models/cifar10/vgg.py)
    "kc_vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "kc_vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "kc_vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"],
    "kc_vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"],
}


class DistillerVGG(nn.Module):
    def __init__(self, cfg: Sequence[Union[int, str]], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        layers: List[nn.Module] = []
        tapped: List[int] = []  # index of the ReLU in front of each max-pool
        cin = in_chans
        for v in cfg:
            if v == "M":
                tapped.append(len(layers) - 1)
                layers[-1] = nn.ReLU()  # read by a tap: not in-place
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                cin = int(v)
        layers.append(nn.AvgPool2d(1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)
        names = [f"features.{i}" for i in tapped]
        self.feature_taps = make_taps(names[0], names[1:], [f"{n}:in" for n in names[1:]],
                                      "classifier:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _register_resnet(name: str, alias: Optional[str], block: Block, num_blocks: Sequence[int],
                     widths: Sequence[int]) -> None:
    aliases = (alias,) if alias else ()

    @register_model(name, *aliases)
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return DistillerResNet(block, num_blocks, widths, num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = (f"Distiller's {name[3:]} (models/cifar10/resnet.py), "
                       f"blocks {tuple(num_blocks)}.")


_SMALL = (16, 32, 64)
_FULL = (64, 128, 256, 512)
for _d in (8, 14, 20, 26, 32, 44, 56):
    _n = (_d - 2) // 6
    _register_resnet(f"kc_resnet{_d}", "resnet26" if _d == 26 else None, KCBasicBlock,
                     (_n, _n, _n), _SMALL)
for _d, _blk, _nb in [(10, KCBasicBlock, (1, 1, 1, 1)), (18, KCBasicBlock, (2, 2, 2, 2)),
                      (34, KCBasicBlock, (3, 4, 6, 3)), (50, KCBottleneck, (3, 4, 6, 3))]:
    _register_resnet(f"kc_resnet{_d}", "resnet10" if _d == 10 else None, _blk, _nb, _FULL)


def _register_vgg(name: str) -> None:
    @register_model(name)
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return DistillerVGG(_VGG_CFG[name], num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = f"Distiller's {name[3:].upper()} (models/cifar10/vgg.py)."


for _name in _VGG_CFG:
    _register_vgg(_name)

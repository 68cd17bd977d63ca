"""Wide Residual Networks for 32x32 inputs (WRN-16-1, 16-2, 40-1, 40-2, 28-4; Distiller's WRN*).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016. Architecture as in
RepDistiller ``models/wrn.py`` (identical in Fast-Datafree ``classifiers/wresnet.py``):
pre-activation blocks, widths 16, 16k, 32k, 64k, (depth-4)/6 blocks per stage, final
BN + ReLU, global average pooling, ``fc``. Module names follow the reference, so its
checkpoints load unchanged (hence ``convShortcut``).

Deliberate deviations:

* the tapped ReLUs (each block's ``relu1`` and the final ``relu``) are not in-place, so
  forward hooks can read their inputs;
* global *adaptive* average pooling instead of ``avg_pool2d(8)`` (same result at 32x32, and
  other input sizes work);
* WRN-28-4 is not in RepDistiller; it is the same class at depth 28, width 4.

Distiller (karanchahal/distiller ``models/wide_resnet/wide_resnet_ab.py``, the ``WRN*`` entries of
``models/model_factory.py``) builds the same network under other module names: stages
``layer1..3`` and head ``linear``. Those are registered as ``kc_wrn{depth}_{k}`` with
Distiller's spelling ``WRN{depth}_{k}`` as alias (WRN10_1, 10_4, 16_1, 16_2, 16_4, 16_8, 22_4,
22_8, 28_1, 28_2, 40_1, 40_4), so Distiller checkpoints load unchanged; ``wrn16_2`` and
``WRN16_2`` are therefore the same function with different state-dict names.

Taps reproduce RepDistiller's ``forward(is_feat=True, preact=...)``: ``stem`` is the first
conv, ``stageK`` the raw output of stage K (a residual sum: WRN is pre-activation, so stage
outputs are *not* rectified), ``preactK`` that tensor after the BatchNorm that the next
ReLU reads (``block{K+1}.layer.0.bn1``, or the final ``bn1``), ``pool`` the input of ``fc``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._factory import register_model
from ._layers import conv3x3, init_weights, make_taps


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut. When the width changes the
    1x1 projection reads the pre-activated input, as in the reference."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # tapped (preact of the previous stage)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.drop_rate = drop_rate
        self.convShortcut = (None if in_planes == out_planes else
                             nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """``n`` blocks held as ``self.layer`` (the reference's ``NetworkBlock``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                      drop_rate) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """RepDistiller's module names: stages ``block1..3``, head ``fc``. Subclasses rename them
    through ``stage_names`` / ``head_name`` (parameter-free renames: same function)."""

    stage_names = ("block1", "block2", "block3")
    head_name = "fc"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(in_chans, widths[0])
        for i, name in enumerate(self.stage_names):
            setattr(self, name, WideStage(n, widths[i], widths[i + 1], 1 if i == 0 else 2,
                                          drop_rate))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()  # tapped (preact3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        setattr(self, self.head_name, nn.Linear(widths[3], num_classes))
        init_weights(self)
        s1, s2, s3 = self.stage_names
        self.feature_taps = make_taps(
            "conv1", [s1, s2, s3],
            [f"{s2}.layer.0.relu1:in", f"{s3}.layer.0.relu1:in", "relu:in"], f"{self.head_name}:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = self.avgpool(self.relu(self.bn1(x))).flatten(1)
        return getattr(self, self.head_name)(x)


class DistillerWideResNet(WideResNet):
    """Distiller's (karanchahal) ``models/wide_resnet/wide_resnet_ab.py`` names: stages
    ``layer1..3`` (each holding ``.layer``), head ``linear``; the computation is RepDistiller's."""

    stage_names = ("layer1", "layer2", "layer3")
    head_name = "linear"


def _register(depth: int, k: int) -> None:
    @register_model(f"wrn{depth}_{k}", f"wrn_{depth}_{k}")
    def factory(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
        return WideResNet(depth, k, num_classes, in_chans, **kw)

    factory.__name__ = f"wrn{depth}_{k}"
    factory.__doc__ = f"WRN-{depth}-{k} (RepDistiller wrn.py)."


def _register_distiller(depth: int, k: int) -> None:
    @register_model(f"kc_wrn{depth}_{k}", f"WRN{depth}_{k}")
    def factory(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
        return DistillerWideResNet(depth, k, num_classes, in_chans, **kw)

    factory.__name__ = f"kc_wrn{depth}_{k}"
    factory.__doc__ = f"WRN-{depth}-{k} in Distiller's layout (wide_resnet_ab.py WRN{depth}_{k})."


for _depth, _k in [(16, 1), (16, 2), (40, 1), (40, 2), (28, 4)]:
    _register(_depth, _k)
# Distiller's models/model_factory.py WRN entries
for _depth, _k in [(10, 1), (10, 4), (16, 1), (16, 2), (16, 4), (16, 8), (22, 4), (22, 8),
                   (28, 1), (28, 2), (40, 1), (40, 4)]:
    _register_distiller(_depth, _k)

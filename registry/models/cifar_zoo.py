"""chenyaofo's pytorch-cifar-models: the CIFAR-10/100 ResNets, VGGs, MobileNetV2s, ShuffleNetV2s
and RepVGGs published with torch.hub checkpoints, registered as ``cy_*``.

Key layouts follow chenyaofo/pytorch-cifar-models ``pytorch_cifar_models/{resnet, vgg,
mobilenetv2, shufflenetv2, repvgg}.py``, so its release files (``cifar10_resnet20-4118986f.pt``
...; plain ``state_dict()`` pickles, no wrapper) load with :func:`engine.checkpoint.load_weights`
unchanged. Upstream builds one network per (dataset, model) under the hub names
``cifar10_<model>`` and ``cifar100_<model>``; here each model is one canonical name ``cy_<model>``
whose ``num_classes`` comes from the caller, and the hub names are aliases that fix nothing but
the name: ``get_model("cifar100_resnet20", num_classes=100)`` -- pass the class count of the
dataset the alias names (and of the checkpoint).

* ``cy_resnet{20,32,44,56}``: 3x3 stem to 16 + BN + ReLU, three stages of (depth-2)/6 basic blocks
  (16 / 32 / 64 channels, strides 1 / 2 / 2, 1x1-conv + BN ``downsample`` projections), global
  average pooling, ``fc``. This is exactly RepDistiller's layout, so the network is
  :class:`registry.models.resnet_cifar.CifarResNet` (``resnet20`` ... take these checkpoints too).
* ``cy_vgg{11,13,16,19}_bn``: torchvision-style ``features`` Sequential (3x3 conv with bias, BN,
  ReLU per layer, 2x2 max-pool after each of the five blocks; convs per block 1-1-2-2-2,
  2-2-2-2-2, 2-2-3-3-3, 2-2-4-4-4, widths 64 / 128 / 256 / 512 / 512), no average pooling (the
  five pools take 32x32 to 1x1), ``classifier`` = Linear 512-512, ReLU, Dropout, Linear 512-512,
  ReLU, Dropout, Linear 512-classes (indices 0, 3, 6). Not RepDistiller's ``vgg11_bn`` (blocks
  ``block0..4``, one Linear) nor Distiller's ``kc_vgg11`` (one Linear).
* ``cy_mobilenetv2_x{0_5,0_75,1_0,1_4}``: torchvision's MobileNetV2 layout (``features.0`` stem,
  ``features.1..17`` inverted residuals, ``features.18`` 1x1 head conv, ``classifier.1``; no
  expansion conv when t = 1, ReLU6) with the stem and the second group at stride 1; channels
  rounded to multiples of 8 (never more than 10 % down), head ``1280 * max(1, width)``,
  Dropout(0.2) before the Linear.
* ``cy_shufflenetv2_x{0_5,1_0,1_5,2_0}``: torchvision's ShuffleNetV2 layout (``conv1``,
  ``stage2..4`` of 4 / 8 / 4 units, ``conv5``, ``fc``) with a stride-1 3x3 stem and no max-pool;
  stage widths 48/96/192, 116/232/464, 176/352/704, 244/488/976, head 1024 (2048 for x2.0).
* ``cy_repvgg_a{0,1,2}``: RepVGG-A (Ding et al., CVPR 2021), 1 + 2 / 4 / 14 / 1 blocks, ``stage0``
  and ``stage1`` at stride 1, widths ``min(64, 64 a)`` then 64 a / 128 a / 256 a / 512 b with
  (a, b) = (0.75, 2.5), (1, 2.5), (1.5, 2.75), ``gap``, ``linear``. In the *training-time*
  (un-fused) form: each block holds ``rbr_dense`` (3x3 conv + BN), ``rbr_1x1`` (1x1 conv + BN) and,
  when width and resolution are kept, ``rbr_identity`` (BN), summed before the ReLU
  (``nonlinearity``). Upstream's hub entry builds the network with ``deploy=False`` and loads the
  release file strictly into it, so the checkpoints hold these branch keys, not the fused
  ``rbr_reparam`` conv of the deploy form (which is not provided here).

Normalisation: every upstream model was trained (chenyaofo/image-classification-codebase
``conf/cifar10.conf`` / ``conf/cifar100.conf``, echoed in the args of each
``logs/<dataset>/<model>/default.log`` of pytorch-cifar-models) with per-dataset statistics,
kept in :data:`TRAIN_NORMALIZATION` (registered with the names, so
:func:`registry.models.model_normalization` hands them to every job) and stated in every factory's
docstring:
CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010) -- the registry's ``cifar10``
spec exactly; CIFAR-100 mean (0.5070, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2761) -- the
registry's ``cifar100`` spec (0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761) differs in the
fourth decimal. The right pair is the one of the dataset the checkpoint was trained on, i.e. the
dataset of its file / alias name (``cifar10_*`` or ``cifar100_*``) and of the run.

Deliberate deviations (none changes a state-dict key or a forward value): ReLUs read by taps are
separate non-inplace modules (ResNet ``act``; VGG the last ReLU of each block); a ShuffleNetV2 unit
applies its final ReLU (``act``) to the concatenation [kept half or branch1, branch2] instead of
to the end of ``branch2`` -- the other half is the output of earlier ReLUs, so the values are
identical and ``act``'s input is the unit's pre-activation; pooling is a module where upstream
calls a function. Initialisation as upstream (He fan-out convs; VGG and MobileNetV2 Linears
N(0, 0.01); ShuffleNetV2 and RepVGG PyTorch defaults), except the ResNet ``fc`` bias starts at 0.

Taps: ``stem`` = stem output; ``stageK`` = output of the K-th stage (ResNet ``layerK``; VGG the
ReLU ending block K, before its pool; MobileNetV2 ``features.3 / 6 / 13 / 17``, the last block at
32 / 16 / 8 / 4 pixels; ShuffleNetV2 ``stage{K+1}``; RepVGG ``stageK``); ``preactK`` = that
stage's last pre-ReLU sum (MobileNetV2: = ``stageK``, linear bottlenecks); ``pool`` = the
penultimate feature the last Linear reads, taken before a Dropout (VGG: the 512-d output of the
second hidden layer, the input of ``classifier.5``; MobileNetV2: the input of ``classifier.0``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ._factory import register_model
from ._layers import channel_shuffle, init_weights, make_taps
from .resnet_cifar import CifarResNet

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]

#: (mean, std) each upstream training run normalised its inputs with, by dataset (see above).
TRAIN_NORMALIZATION: Dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}
_LABEL = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _stats_text() -> str:
    def fmt(v: Sequence[float]) -> str:
        return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"

    return "; ".join(f"{_LABEL[ds]} mean {fmt(m)}, std {fmt(s)}"
                     for ds, (m, s) in TRAIN_NORMALIZATION.items())


# ---------------------------------------------------------------------------------------------
# VGG-BN (pytorch_cifar_models/vgg.py)

_VGG_CONVS = {"vgg11_bn": (1, 1, 2, 2, 2), "vgg13_bn": (2, 2, 2, 2, 2),
              "vgg16_bn": (2, 2, 3, 3, 3), "vgg19_bn": (2, 2, 4, 4, 4)}
_VGG_WIDTHS = (64, 128, 256, 512, 512)


class CyVGG(nn.Module):
    """``features`` (conv-BN-ReLU per layer, max-pool per block) and a three-Linear head."""

    def __init__(self, convs: Sequence[int], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        layers: List[nn.Module] = []
        block_ends = []  # index in ``features`` of the ReLU that ends each block
        cin = in_chans
        for n, width in zip(convs, _VGG_WIDTHS):
            for i in range(n):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=i < n - 1)]  # the block's last ReLU is tapped
                cin = width
            block_ends.append(len(layers) - 1)
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, num_classes))
        init_weights(self, linear_std=0.01)
        ends = [f"features.{i}" for i in block_ends]
        # pool: the penultimate 512-d feature the last Linear reads (before its Dropout)
        self.feature_taps = make_taps(ends[0], ends[1:], [f"{e}:in" for e in ends[1:]],
                                      "classifier.5:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# MobileNetV2 (pytorch_cifar_models/mobilenetv2.py)

# (expansion t, channels c, repeats n, first stride s); the second group's stride is 1 on CIFAR
_MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
_MBV2_WIDTHS = {"mobilenetv2_x0_5": 0.5, "mobilenetv2_x0_75": 0.75, "mobilenetv2_x1_0": 1.0,
                "mobilenetv2_x1_4": 1.4}


def _round8(v: float) -> int:
    """Nearest multiple of 8 (at least 8), one step up if that lost more than 10 %."""
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class CyInvertedResidual(nn.Module):
    """[1x1 expand] - 3x3 depthwise - 1x1 linear projection in ``conv``; identity residual at
    stride 1 with equal widths."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(cin * expansion))
        self.use_residual = stride == 1 and cin == cout
        layers: List[nn.Module] = [] if expansion == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CyMobileNetV2(nn.Module):
    def __init__(self, width_mult: float, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        cin = _round8(32 * width_mult)
        last = _round8(1280 * max(1.0, width_mult))
        layers: List[nn.Module] = [_conv_bn_relu6(in_chans, cin, 3, stride=1)]
        group_ends = []
        for t, c, n, s in _MBV2_SETTING:
            cout = _round8(c * width_mult)
            for i in range(n):
                layers.append(CyInvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            group_ends.append(len(layers) - 1)
        layers.append(_conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        init_weights(self, linear_std=0.01)
        # the last block of the 24-, 32-, 96- and 320-channel groups (32, 16, 8, 4 pixels)
        stages = [f"features.{group_ends[g]}" for g in (1, 2, 4, 6)]
        self.feature_taps = make_taps("features.0", stages, stages, "classifier.0:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------
# ShuffleNetV2 (pytorch_cifar_models/shufflenetv2.py)

_SHUFFLE_REPEATS = (4, 8, 4)
_SHUFFLE_CHANNELS = {"shufflenetv2_x0_5": (24, 48, 96, 192, 1024),
                     "shufflenetv2_x1_0": (24, 116, 232, 464, 1024),
                     "shufflenetv2_x1_5": (24, 176, 352, 704, 1024),
                     "shufflenetv2_x2_0": (24, 244, 488, 976, 2048)}


def _depthwise(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)


def _pointwise(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class CyShuffleUnit(nn.Module):
    """Stride 2: ``branch1`` (depthwise-pointwise) beside ``branch2`` on the whole input; stride
    1: the first half kept, ``branch2`` (pointwise-depthwise-pointwise) on the second; then
    ``act`` on the concatenation and a 2-group channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // 2
        if stride == 1 and cin != cout:
            raise ValueError("a stride-1 ShuffleNetV2 unit keeps its width")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(_depthwise(cin, stride), nn.BatchNorm2d(cin),
                                         _pointwise(cin, mid), nn.BatchNorm2d(mid),
                                         nn.ReLU(inplace=True))
        self.branch2 = nn.Sequential(  # indices 0-6 as upstream; its trailing ReLU is ``act``
            _pointwise(cin if stride > 1 else mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            _depthwise(mid, stride), nn.BatchNorm2d(mid),
            _pointwise(mid, mid), nn.BatchNorm2d(mid))
        self.act = nn.ReLU()  # tapped: input is the unit's pre-activation (before the shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, rest = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch2(rest)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(self.act(out), 2)


class CyShuffleNetV2(nn.Module):
    def __init__(self, channels: Sequence[int], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        cin = channels[0]
        for k, (n, cout) in enumerate(zip(_SHUFFLE_REPEATS, channels[1:4]), 2):
            units = [CyShuffleUnit(cin, cout, 2)]
            units += [CyShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{k}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(_pointwise(cin, channels[4]), nn.BatchNorm2d(channels[4]),
                                   nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[4], num_classes)
        self.feature_taps = make_taps(
            "conv1", [f"stage{k}" for k in (2, 3, 4)],
            [f"stage{k}.{n - 1}.act:in" for k, n in zip((2, 3, 4), _SHUFFLE_REPEATS)], "fc:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(self.avgpool(self.conv5(x)).flatten(1))


# ---------------------------------------------------------------------------------------------
# RepVGG, training-time form (pytorch_cifar_models/repvgg.py)

_REPVGG_BLOCKS = (2, 4, 14, 1)
_REPVGG_WIDTHS = {"repvgg_a0": (0.75, 0.75, 0.75, 2.5), "repvgg_a1": (1.0, 1.0, 1.0, 2.5),
                  "repvgg_a2": (1.5, 1.5, 1.5, 2.75)}


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), bn=nn.BatchNorm2d(cout)))


class CyRepVGGBlock(nn.Module):
    """ReLU(3x3 conv-BN + 1x1 conv-BN [+ BN of the input when shape is kept])."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = _conv_bn(cin, cout, 3, stride)
        self.rbr_1x1 = _conv_bn(cin, cout, 1, stride)
        self.nonlinearity = nn.ReLU()  # tapped: input is the block's pre-activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)


class CyRepVGG(nn.Module):
    def __init__(self, widths: Sequence[float], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        cin = min(64, int(64 * widths[0]))
        self.stage0 = CyRepVGGBlock(in_chans, cin, 1)
        for k, (base, w, n, stride) in enumerate(zip((64, 128, 256, 512), widths, _REPVGG_BLOCKS,
                                                     (1, 2, 2, 2)), 1):
            cout = int(base * w)
            blocks = [CyRepVGGBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                      for i in range(n)]
            setattr(self, f"stage{k}", nn.Sequential(*blocks))
            cin = cout
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        self.feature_taps = make_taps(
            "stage0", [f"stage{k}" for k in (1, 2, 3, 4)],
            [f"stage{k}.{n - 1}.nonlinearity:in" for k, n in zip((1, 2, 3, 4), _REPVGG_BLOCKS)],
            "linear:in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(self.gap(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# Registration: cy_<model>, aliases cifar10_<model> and cifar100_<model> (upstream's hub names)

def _register(model: str, build, summary: str) -> None:
    name = f"cy_{model}"

    @register_model(name, f"cifar10_{model}", f"cifar100_{model}", normalization=TRAIN_NORMALIZATION)
    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return build(num_classes, in_chans)

    factory.__name__ = name
    factory.__doc__ = (f"{summary} (chenyaofo pytorch-cifar-models, hub names cifar10_{model} / "
                       f"cifar100_{model}). Trained with {_stats_text()}.")


for _d in (20, 32, 44, 56):
    _register(f"resnet{_d}", lambda nc, ic, d=_d: CifarResNet(d, (16, 16, 32, 64), nc, ic),
              f"CIFAR ResNet-{_d}, 16/32/64 channels, 1x1 projection shortcuts (resnet.py)")
for _m, _convs in _VGG_CONVS.items():
    _register(_m, lambda nc, ic, c=_convs: CyVGG(c, nc, ic),
              f"VGG-{_m[3:5]} with BatchNorm and a three-Linear head (vgg.py)")
for _m, _w in _MBV2_WIDTHS.items():
    _register(_m, lambda nc, ic, w=_w: CyMobileNetV2(w, nc, ic),
              f"MobileNetV2, width {_w}, stride-1 stem (mobilenetv2.py)")
for _m, _ch in _SHUFFLE_CHANNELS.items():
    _register(_m, lambda nc, ic, c=_ch: CyShuffleNetV2(c, nc, ic),
              f"ShuffleNetV2, stage widths {_ch[1:4]}, head {_ch[4]} (shufflenetv2.py)")
for _m, _w in _REPVGG_WIDTHS.items():
    _register(_m, lambda nc, ic, w=_w: CyRepVGG(w, nc, ic),
              f"RepVGG-{_m[-2:].upper()}, training-time (un-fused) branches, widths {_w} "
              "(repvgg.py)")

"""Model zoo: names and aliases, logits, feature taps, parameter counts, in_chans."""
import functools
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn

from engine.hooks import FeatureTaps
from registry.models import canonical_name, get_model, list_models
from registry.models._layers import channel_shuffle

NUM_CLASSES = 7
Shape = Tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Expected tap shapes (without the batch dimension), written from the reference definitions.
# RepDistiller (RD) models/*.py for the CIFAR families at 32x32, DAFL lenet.py at 1x32x32,
# torchvision at 64x64.


def _taps(stem: Shape, stages, pool: int) -> Dict[str, Shape]:
    out = {"stem": stem, "pool": (pool,)}
    out.update({f"stage{i}": s for i, s in enumerate(stages, 1)})
    return out


def _wrn(k: int):  # RD wrn.py: widths 16, 16k, 32k, 64k; strides 1, 2, 2; stem = first conv
    return _taps((16, 32, 32), [(16 * k, 32, 32), (32 * k, 16, 16), (64 * k, 8, 8)], 64 * k)


# RD resnet.py: stem 16 (x4: 32), stages 16/32/64 (x4: 64/128/256), strides 1, 2, 2
_RESNET_THIN = _taps((16, 32, 32), [(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64)
_RESNET_WIDE = _taps((32, 32, 32), [(64, 32, 32), (128, 16, 16), (256, 8, 8)], 256)
# RD resnetv2.py: stride-1 stem of 64, stages 64..512 at strides 1, 2, 2, 2 (x4 for Bottleneck)
_RESNET_V2 = _taps((64, 32, 32), [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)], 512)
_RESNET_V2_50 = _taps((64, 32, 32), [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
                      2048)
# RD vgg.py: max-pool after blocks 0-2 only (the fourth pool is for 64x64 inputs)
_VGG = _taps((64, 32, 32), [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512)
# Distiller (karanchahal) models/cifar10/resnet.py: stride-1 stem of 64 channels; ResNetSmall
# stages 16/32/64 at strides 1, 2, 2, then AvgPool2d(4) on 8x8 flattened to 64*2*2 = 256;
# ResNet stages 64..512 (x4 for Bottleneck) at strides 1, 2, 2, 2
_KC_SMALL = _taps((64, 32, 32), [(16, 32, 32), (32, 16, 16), (64, 8, 8)], 256)
_KC_RESNET = _RESNET_V2
_KC_RESNET_BOTTLENECK = _RESNET_V2_50
# Distiller models/cifar10/vgg.py: a 2x2 max-pool closes each of the five conv groups; the stem
# and stage taps are the ReLUs in front of the pools
_KC_VGG = _taps((64, 32, 32), [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)], 512)
# torchvision ResNet at 64x64: stem /4 after max-pool, stages /4 /8 /16 /32
_TV_RESNET = _taps((64, 16, 16), [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)], 512)
_TV_RESNET50 = _taps((64, 16, 16), [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)],
                     2048)

EXPECTED: Dict[str, Dict[str, Shape]] = {
    **{f"wrn{d}_{k}": _wrn(k) for d, k in [(16, 1), (16, 2), (40, 1), (40, 2), (28, 4)]},
    **{f"resnet{d}": _RESNET_THIN for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _RESNET_WIDE,
    "resnet32x4": _RESNET_WIDE,
    # akamaster option-A ResNets: RD resnet.py's stage shapes
    **{f"resnet{d}_a": _RESNET_THIN for d in (20, 32, 44, 56, 110)},
    **{f"kc_resnet{d}": _KC_SMALL for d in (8, 14, 20, 26, 32, 44, 56)},
    **{f"kc_resnet{d}": _KC_RESNET for d in (10, 18, 34)},
    "kc_resnet50": _KC_RESNET_BOTTLENECK,
    **{f"kc_vgg{d}": _KC_VGG for d in (11, 13, 16, 19)},
    # Distiller wide_resnet_ab.py: RD wrn.py's shapes under other module names
    **{f"kc_wrn{d}_{k}": _wrn(k) for d, k in [(10, 1), (10, 4), (16, 1), (16, 2), (16, 4), (16, 8),
                                             (22, 4), (22, 8), (28, 1), (28, 2), (40, 1), (40, 4)]},
    "resnet18": _RESNET_V2,
    "resnet34": _RESNET_V2,
    "resnet50": _RESNET_V2_50,
    **{f"vgg{d}": _VGG for d in (8, 11, 13, 16, 19)},
    # RD mobilenetv2.py mobile_half: stride-2 stem of 16; groups 1, 2, 4, 6 give 12, 16, 48, 160
    # channels at strides 2, 4, 8, 16; head conv to 1280
    "mobilenetv2": _taps((16, 16, 16), [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280),
    # mobile_full: width 1.0, so 32 / 24 / 32 / 96 / 320 channels
    "mobile_full": _taps((32, 16, 16), [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)], 1280),
    # RD ShuffleNetv1.py: 1x1 stem of 24, stages 240/480/960 each opening with stride 2
    "shufflenetv1": _taps((24, 32, 32), [(240, 16, 16), (480, 8, 8), (960, 4, 4)], 960),
    # RD ShuffleNetv2.py (net_size 1): stem 24, stages 116/232/464, head conv to 1024
    "shufflenetv2": _taps((24, 32, 32), [(116, 16, 16), (232, 8, 8), (464, 4, 4)], 1024),
    # DAFL lenet.py: 5x5 valid convs with 2x2 max-pools: 32 -> 28 -> 14 -> 10 -> 5 -> 1
    "lenet5": _taps((6, 28, 28), [(16, 10, 10), (120, 1, 1)], 84),
    "lenet5_bn": _taps((6, 28, 28), [(16, 10, 10), (120, 1, 1)], 84),
    "lenet5_half": _taps((3, 28, 28), [(8, 10, 10), (60, 1, 1)], 42),
    "lenet5_half_bn": _taps((3, 28, 28), [(8, 10, 10), (60, 1, 1)], 42),
    "resnet18_imagenet": _TV_RESNET,
    "resnet34_imagenet": _TV_RESNET,
    "resnet50_imagenet": _TV_RESNET50,
    # torchvision mobilenet_v2 at 64x64: features.0 /2, features.3/6/13/17 at /4 /8 /16 /32
    "mobilenetv2_imagenet": _taps((32, 32, 32), [(24, 16, 16), (32, 8, 8), (96, 4, 4),
                                                  (320, 2, 2)], 1280),
}

# How a stage tap relates to its preact tap, per RD's forward(is_feat=True, preact=...):
#   relu     stageK == relu(preactK) (post-activation residual / conv stages)
#   wrn      pre-activation WRN: stageK is the raw residual sum, preactK = BN(stageK)
#   shuffle2 ShuffleNetV2: preactK is the unshuffled concatenation, stageK its shuffled ReLU
#   linear   MobileNetV2 linear bottlenecks: RD returns the same tensor for both
RELATION = {name: "relu" for name in EXPECTED}
RELATION.update({n: "wrn" for n in EXPECTED if n.startswith(("wrn", "kc_wrn"))})
RELATION.update({"shufflenetv2": "shuffle2", "mobilenetv2": "linear", "mobile_full": "linear",
                 "mobilenetv2_imagenet": "linear"})

# chenyaofo pytorch-cifar-models (registry/models/cifar_zoo.py): stride-1 stems on 32x32
_CY_RESNET = _RESNET_THIN  # the same layout as RD resnet.py
_CY_VGG = _KC_VGG  # a pool closes each of the five blocks; stage taps are the ReLUs before them
EXPECTED.update({
    **{f"cy_resnet{d}": _CY_RESNET for d in (20, 32, 44, 56)},
    **{f"cy_vgg{d}_bn": _CY_VGG for d in (11, 13, 16, 19)},
    # torchvision layout, stem and second group at stride 1: features.0, .3, .6, .13, .17
    "cy_mobilenetv2_x0_5": _taps((16, 32, 32), [(16, 32, 32), (16, 16, 16), (48, 8, 8), (160, 4, 4)], 1280),
    "cy_mobilenetv2_x0_75": _taps((24, 32, 32), [(24, 32, 32), (24, 16, 16), (72, 8, 8), (240, 4, 4)], 1280),
    "cy_mobilenetv2_x1_0": _taps((32, 32, 32), [(24, 32, 32), (32, 16, 16), (96, 8, 8), (320, 4, 4)], 1280),
    "cy_mobilenetv2_x1_4": _taps((48, 32, 32), [(32, 32, 32), (48, 16, 16), (136, 8, 8), (448, 4, 4)], 1792),
    # torchvision layout, stride-1 3x3 stem of 24, no max-pool
    **{f"cy_shufflenetv2_{w}": _taps((24, 32, 32), [(c1, 16, 16), (2 * c1, 8, 8), (4 * c1, 4, 4)], h)
       for w, c1, h in [("x0_5", 48, 1024), ("x1_0", 116, 1024), ("x1_5", 176, 1024), ("x2_0", 244, 2048)]},
    # RepVGG-A: stage0 and stage1 at stride 1
    "cy_repvgg_a0": _taps((48, 32, 32), [(48, 32, 32), (96, 16, 16), (192, 8, 8), (1280, 4, 4)], 1280),
    "cy_repvgg_a1": _taps((64, 32, 32), [(64, 32, 32), (128, 16, 16), (256, 8, 8), (1280, 4, 4)], 1280),
    "cy_repvgg_a2": _taps((64, 32, 32), [(96, 32, 32), (192, 16, 16), (384, 8, 8), (1408, 4, 4)], 1408),
})
RELATION.update({n: "relu" for n in EXPECTED if n.startswith("cy_")})
RELATION.update({n: "shuffle2" for n in EXPECTED if n.startswith("cy_shufflenetv2")})
RELATION.update({n: "linear" for n in EXPECTED if n.startswith("cy_mobilenetv2")})


def input_shape(name: str) -> Shape:
    if name.startswith("lenet"):
        return (2, 1, 32, 32)
    if name.endswith("_imagenet"):
        return (2, 3, 64, 64)
    return (2, 3, 32, 32)


@functools.lru_cache(maxsize=None)
def tapped_forward(name: str):
    """Build ``name`` for NUM_CLASSES, run one eval forward with its declared taps."""
    torch.manual_seed(0)
    model = get_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(*input_shape(name))
    with FeatureTaps(model) as taps, torch.no_grad():
        logits = model(x)
        feats = dict(taps.features)
    return model, logits, feats


def classifier_of(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_expected_table_covers_every_model():
    assert sorted(EXPECTED) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_builds_logits_and_fills_every_tap(name):
    model, logits, feats = tapped_forward(name)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert set(feats) == set(model.feature_taps)
    n = sum(k.startswith("stage") for k in model.feature_taps)
    assert n >= 2
    standard = (["stem"] + [f"stage{i}" for i in range(1, n + 1)]
                + [f"preact{i}" for i in range(1, n + 1)] + ["pool"])
    assert list(model.feature_taps) == standard


@pytest.mark.parametrize("name", list_models())
def test_tap_shapes_match_reference(name):
    model, logits, feats = tapped_forward(name)
    expected = EXPECTED[name]
    got = {k: tuple(v.shape[1:]) for k, v in feats.items() if not k.startswith("preact")}
    assert got == expected
    for k, v in feats.items():
        assert v.shape[0] == 2, k
        if k.startswith("preact"):
            assert v.shape == feats["stage" + k[len("preact"):]].shape, k


@pytest.mark.parametrize("name", list_models())
def test_pool_tap_is_the_classifier_input(name):
    model, logits, feats = tapped_forward(name)
    fc = classifier_of(model)
    assert feats["pool"].shape == (2, fc.in_features)
    with torch.no_grad():
        assert torch.allclose(fc(feats["pool"]), logits, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_stage_and_preact_taps(name):
    model, _, feats = tapped_forward(name)
    n = sum(k.startswith("stage") for k in feats)
    rel = RELATION[name]
    for i in range(1, n + 1):
        stage, pre = feats[f"stage{i}"], feats[f"preact{i}"]
        # an in-place ReLU after the tapped module would have rectified the stored tensor
        assert (pre < 0).any(), f"preact{i} has no negative value"
        if rel == "relu":
            assert (stage >= 0).all()
            assert torch.equal(stage, torch.relu(pre))
        elif rel == "shuffle2":
            assert (stage >= 0).all()
            assert torch.equal(stage, channel_shuffle(torch.relu(pre), 2))
        elif rel == "linear":
            assert torch.equal(stage, pre)
        else:  # wrn: RD's preact is the next BatchNorm applied to the raw stage output
            bn = (model.bn1 if i == n else getattr(model, model.stage_names[i]).layer[0].bn1)
            with torch.no_grad():
                assert torch.allclose(pre, bn(stage), atol=1e-6)
            assert not torch.equal(stage, torch.relu(stage)), "WRN stage outputs are raw sums"
    if rel in ("relu", "shuffle2"):
        assert (feats["stem"] >= 0).all()


# Parameter counts with 100 classes. CIFAR families: counted by instantiating the reference
# definitions (RD models/wrn.py, resnet.py, resnetv2.py, vgg.py *_bn, mobilenetv2.py
# mobile_half, ShuffleNetv1.py, ShuffleNetv2.py); they agree with the sizes RD's CRD paper
# reports (e.g. WRN-40-2 2.26M, resnet32x4 7.43M, vgg13 9.46M, ResNet50 23.71M, ShuffleV1
# 0.95M, ShuffleV2 1.36M, MobileNetV2 0.81M). The same figures follow by hand, e.g. resnet8 =
# stem 432+32 + stage1 2*(2304+32) + stage2 (4608+9216+512+3*64) + stage3 (18432+36864+2048+
# 3*128) + fc 6500 = 83892.
PARAMS_100 = {
    "wrn16_1": 180916, "wrn16_2": 703284, "wrn40_1": 569780, "wrn40_2": 2255156,
    "wrn28_4": 5872180,
    "resnet8": 83892, "resnet14": 181108, "resnet20": 278324, "resnet32": 472756,
    "resnet44": 667188, "resnet56": 861620, "resnet110": 1736564,
    "resnet8x4": 1233540, "resnet32x4": 7433860,
    "resnet18": 11220132, "resnet34": 21328292, "resnet50": 23705252,
    "vgg8": 3965028, "vgg11": 9277284, "vgg13": 9462180, "vgg16": 14774436, "vgg19": 20086692,
    "mobilenetv2": 812836, "shufflenetv1": 949258, "shufflenetv2": 1355528,
}
# 10 classes. DAFL lenet.py by hand: convs 156 + 2416 + 48120, fc 10164 + 850 = 61706; half:
# 78 + 608 + 12060, 2562 + 430 = 15738. BN variants (ours, bias-free convs): lenet5_bn =
# 150 + 2400 + 48000 + BN2d 2*(6+16+120) + 10164 + BN1d 2*84 + 850 = 62016; lenet5_half_bn =
# 75 + 600 + 12000 + 2*(3+8+60) + 2562 + 2*42 + 430 = 15893.
PARAMS_10 = {"lenet5": 61706, "lenet5_half": 15738, "lenet5_bn": 62016,
             "lenet5_half_bn": 15893}
# 10 classes, Distiller: the "# params:" comments of its models/model_factory.py (resnet20 there
# carries a copy-paste error; 283754 and ResNet-26's 380970 are from its README table).
PARAMS_10.update({
    "kc_wrn10_4": 1198810, "kc_wrn16_1": 175066, "kc_wrn16_2": 691674, "kc_wrn16_4": 2748890,
    "kc_wrn16_8": 10961370, "kc_wrn28_2": 1467610, "kc_wrn22_4": 4298970,
    "kc_wrn22_8": 17158106, "kc_wrn28_1": 369498, "kc_wrn10_1": 77850, "kc_wrn40_1": 563930,
    "kc_wrn40_4": 8949210,
    "resnet8": 78042, "resnet14": 175258, "resnet20": 272474, "resnet32": 466906,  # *_sm
    "resnet44": 661338, "resnet56": 855770, "resnet110": 1730714,
    "kc_resnet8": 89322, "kc_resnet20": 283754, "kc_resnet26": 380970, "kc_resnet10": 4903242,
    "kc_resnet18": 11173962, "kc_resnet34": 21282122, "kc_resnet50": 23520842,
    "kc_vgg11": 9231114, "kc_vgg13": 9416010, "kc_vgg16": 14728266, "kc_vgg19": 20040522,
    # akamaster ResNet-20 by hand: stem 432+32, stage1 3*(2*2304+64), stage2 (4608+9216+128)
    # + 2*(2*9216+128), stage3 (18432+36864+256) + 2*(2*36864+256), linear 650 = 269722
    "resnet20_a": 269722,
})
# 1000 classes: torchvision's published sizes (torchvision.models documentation).
# (Distiller's *_v names are these nets: its factory lists resnet18_v 11181642 at 10 classes.)
PARAMS_1000 = {"resnet18_imagenet": 11689512, "resnet34_imagenet": 21797672,
               "resnet50_imagenet": 25557032, "mobilenetv2_imagenet": 3504872}


@pytest.mark.parametrize("name,classes,expected",
                         [(n, 100, p) for n, p in PARAMS_100.items()]
                         + [(n, 10, p) for n, p in PARAMS_10.items()]
                         + [(n, 1000, p) for n, p in PARAMS_1000.items()])
def test_parameter_counts(name, classes, expected):
    model = get_model(name, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == expected


# Parameter names of the reference implementations, so their checkpoints load strictly.
REFERENCE_KEYS = {
    "wrn40_2": ["conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight",
                "bn1.running_var", "fc.weight"],
    "resnet56": ["conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
                 "layer3.8.conv2.weight", "fc.bias"],
    "resnet18": ["layer2.0.shortcut.0.weight", "layer4.1.bn2.weight", "linear.weight"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.shortcut.1.weight", "linear.weight"],
    "vgg13": ["block0.0.weight", "block0.3.bias", "block0.4.running_mean", "classifier.weight"],
    "mobilenetv2": ["conv1.0.weight", "blocks.1.0.conv.3.weight", "conv2.1.weight",
                    "classifier.0.weight"],
    "shufflenetv1": ["layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
    "shufflenetv2": ["layer1.0.conv5.weight", "layer2.7.bn3.weight", "bn2.weight", "linear.bias"],
    "lenet5": ["features.0.weight", "features.3.weight", "features.6.bias", "fc.0.weight",
               "fc.2.weight"],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_state_dict_uses_reference_names(name):
    keys = set(get_model(name, num_classes=NUM_CLASSES).state_dict())
    assert set(REFERENCE_KEYS[name]) <= keys


# Every registered alias and the canonical model it must build.
ALIASES = {
    **{f"wrn_{d}_{k}": f"wrn{d}_{k}" for d, k in [(16, 1), (16, 2), (40, 1), (40, 2), (28, 4)]},
    "ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
    **{f"vgg{d}_bn": f"vgg{d}" for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": "mobilenetv2", "mobile_half": "mobilenetv2",
    "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2",
    "LeNet5": "lenet5", "LeNet5Half": "lenet5_half",
    # Distiller (karanchahal) spellings
    **{f"WRN{d}_{k}": f"kc_wrn{d}_{k}" for d, k in [(10, 1), (10, 4), (16, 1), (16, 2), (16, 4),
                                                   (16, 8), (22, 4), (22, 8), (28, 1), (28, 2),
                                                   (40, 1), (40, 4)]},
    "resnet10": "kc_resnet10", "resnet26": "kc_resnet26",
    **{f"resnet{d}_sm": f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}_v": f"resnet{d}_imagenet" for d in (18, 34, 50)},
}
ALIASES.update({f"{ds}_{n[3:]}": n for n in EXPECTED if n.startswith("cy_")
                for ds in ("cifar10", "cifar100")})
# Keys of Fast-Datafree's registry.py MODEL_DICT / IMAGENET_MODEL_DICT and RD's model_dict.
FD_NAMES = ["wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2", "resnet8", "resnet20", "resnet32",
            "resnet56", "resnet110", "resnet8x4", "resnet32x4", "vgg8", "vgg11", "vgg13",
            "shufflenetv2", "mobilenetv2", "resnet50", "resnet18", "resnet34",
            "resnet50_imagenet", "resnet18_imagenet", "mobilenetv2_imagenet"]
RD_NAMES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
            "resnet8x4", "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1",
            "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobile_half", "mobile_full",
            "MobileNetV2", "ShuffleV1", "ShuffleV2"]


def test_alias_table_is_complete():
    assert set(list_models(include_aliases=True)) - set(list_models()) == set(ALIASES)


@pytest.mark.parametrize("alias,canonical", sorted(ALIASES.items()))
def test_alias_builds_the_canonical_model(alias, canonical):
    assert canonical_name(alias) == canonical
    a = get_model(alias, num_classes=NUM_CLASSES)
    b = get_model(canonical, num_classes=NUM_CLASSES)
    assert a.model_name == canonical and type(a) is type(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}
    assert a.feature_taps == b.feature_taps


@pytest.mark.parametrize("name", sorted(set(FD_NAMES + RD_NAMES)))
def test_fast_datafree_and_repdistiller_spellings_resolve(name):
    assert canonical_name(name) in list_models()


# One model per CIFAR family with a 1-channel stem (MNIST / digits); LeNet with 3 channels;
# torchvision models with a replaced 1-channel stem.
IN_CHANS = [("wrn16_1", 1), ("resnet8", 1), ("resnet8x4", 1), ("resnet18", 1), ("vgg8", 1),
            ("mobilenetv2", 1), ("shufflenetv1", 1), ("shufflenetv2", 1), ("lenet5", 3),
            ("lenet5_half_bn", 3), ("resnet18_imagenet", 1), ("mobilenetv2_imagenet", 1)]


@pytest.mark.parametrize("name,chans", IN_CHANS)
def test_in_chans(name, chans):
    model = get_model(name, num_classes=NUM_CLASSES, in_chans=chans).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == chans
    shape = list(input_shape(name))
    shape[1] = chans
    with FeatureTaps(model) as taps, torch.no_grad():
        assert model(torch.randn(*shape)).shape == (2, NUM_CLASSES)
        assert set(taps.features) == set(model.feature_taps)


def test_default_in_chans():
    assert get_model("lenet5").features[0].in_channels == 1
    assert get_model("resnet8").conv1.in_channels == 3


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        get_model("wrn40_3", num_classes=NUM_CLASSES)
    msg = str(err.value)
    assert "wrn40_3" in msg
    for valid in ("wrn40_2", "wrn_40_2", "resnet32x4", "ShuffleV1", "lenet5_half_bn"):
        assert valid in msg


def test_wrn_blocks_are_preactivation_as_in_reference():
    # RD wrn.py BasicBlock: a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))); the shortcut is
    # x itself when widths match, else the 1x1 convShortcut applied to a (not to x).
    model = get_model("wrn16_2", num_classes=NUM_CLASSES).eval()
    torch.manual_seed(0)
    for blk, x in [(model.block2.layer[0], torch.randn(2, 32, 16, 16)),
                   (model.block2.layer[1], torch.randn(2, 64, 8, 8))]:
        with torch.no_grad():
            a = torch.relu(blk.bn1(x))
            branch = blk.conv2(torch.relu(blk.bn2(blk.conv1(a))))
            short = x if blk.convShortcut is None else blk.convShortcut(a)
            assert torch.allclose(blk(x), branch + short, atol=1e-6)
    assert model.block2.layer[0].convShortcut is not None
    assert model.block2.layer[1].convShortcut is None


def test_wrn_dropout_kwarg():
    model = get_model("wrn16_2", num_classes=NUM_CLASSES, drop_rate=0.3)
    assert model.block1.layer[0].drop_rate == 0.3
    with pytest.raises(TypeError):
        get_model("resnet8", num_classes=NUM_CLASSES, drop_rate=0.3)

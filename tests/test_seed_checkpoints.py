"""Teacher checkpoints of the seed code bases load into the registry by name.

The expected state-dict names and shapes are rebuilt here from a reading of each reference
definition (RepDistiller = RD ``models/*.py``, Fast-Datafree = FD ``datafree/models/classifiers``,
Distiller = KC ``karanchahal/distiller`` ``models/cifar10``, ``cifar10sm``, ``wide_resnet``),
independently of the registry code. Checkpoints are written in each seed's saving layout:
RD ``{'model': sd, 'epoch', ...}``, FD ``{'state_dict': sd with 'module.', 'best_acc1'}``, KC
``{'model_state_dict': sd with 'module.', 'optimizer_state_dict', 'epoch'}``. Functions (not only
names) are checked against forwards written here with ``torch.nn.functional``, among them the
real akamaster ResNet-20 of ``../shared/ckpt``.
"""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import pytest
from keytables import Table, _bn, _conv, _linear
import torch
import torch.nn.functional as F

from engine.checkpoint import (CheckpointMismatchError, check_fit, extract_state_dict,
                               load_checkpoint, load_weights)
from registry import check_teachers
from registry.models import canonical_name, get_model
from registry.models.resnet_akamaster import OptionABlock, PadShortcut

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CKPT = os.environ.get("FASTDFKD_SHARED_CKPT", os.path.join(ROOT, "..", "shared", "ckpt"))
AKAMASTER = os.path.join(SHARED_CKPT, "akamaster", "resnet20-12fca82f.th")
FETCH = os.path.join(ROOT, "scripts", "fetch_pretrained_teachers.sh")



# ---------------------------------------------------------------------------------------------
# Reference key tables (name -> shape), written from the reference definitions.


def bearpaw_resnet(depth: int, filters: Sequence[int], classes: int,
                   shortcut: bool = True, head: str = "fc") -> Table:
    """RD resnet.py / FD resnet_tiny.py / KC cifar10sm/resnet.py (``downsample`` projection only
    in a stage's first block); ``shortcut=False``, ``head='linear'``: akamaster's option A."""
    t: Table = OrderedDict()
    n = (depth - 2) // 6
    _conv(t, "conv1", filters[0], 3, 3)
    _bn(t, "bn1", filters[0])
    cin = filters[0]
    for s, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
        for b in range(n):
            p = f"layer{s}.{b}"
            _conv(t, f"{p}.conv1", planes, cin, 3)
            _bn(t, f"{p}.bn1", planes)
            _conv(t, f"{p}.conv2", planes, planes, 3)
            _bn(t, f"{p}.bn2", planes)
            if shortcut and b == 0 and (stride != 1 or cin != planes):
                _conv(t, f"{p}.downsample.0", planes, cin, 1)
                _bn(t, f"{p}.downsample.1", planes)
            cin = planes
    _linear(t, head, classes, filters[3])
    return t


def kuangliu_resnet(bottleneck: bool, blocks: Sequence[int], planes: Sequence[int],
                    head_in: int, classes: int) -> Table:
    """RD resnetv2.py, FD resnet.py (DAFL), KC cifar10/resnet.py ``ResNet`` and ``ResNetSmall``:
    3x3 stem to 64, ``shortcut`` projections, head ``linear``."""
    t: Table = OrderedDict()
    exp = 4 if bottleneck else 1
    _conv(t, "conv1", 64, 3, 3)
    _bn(t, "bn1", 64)
    cin = 64
    for s, (p_, n) in enumerate(zip(planes, blocks), 1):
        for b in range(n):
            stride = (1 if s == 1 else 2) if b == 0 else 1
            p = f"layer{s}.{b}"
            if bottleneck:
                _conv(t, f"{p}.conv1", p_, cin, 1)
                _bn(t, f"{p}.bn1", p_)
                _conv(t, f"{p}.conv2", p_, p_, 3)
                _bn(t, f"{p}.bn2", p_)
                _conv(t, f"{p}.conv3", exp * p_, p_, 1)
                _bn(t, f"{p}.bn3", exp * p_)
            else:
                _conv(t, f"{p}.conv1", p_, cin, 3)
                _bn(t, f"{p}.bn1", p_)
                _conv(t, f"{p}.conv2", p_, p_, 3)
                _bn(t, f"{p}.bn2", p_)
            if stride != 1 or cin != exp * p_:
                _conv(t, f"{p}.shortcut.0", exp * p_, cin, 1)
                _bn(t, f"{p}.shortcut.1", exp * p_)
            cin = exp * p_
    _linear(t, "linear", classes, head_in)
    return t


def wide_resnet(depth: int, k: int, classes: int, stage: str = "block", head: str = "fc") -> Table:
    """RD wrn.py / FD wresnet.py (``blockN``, ``fc``); KC wide_resnet_ab.py (``layerN``,
    ``linear``)."""
    t: Table = OrderedDict()
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    _conv(t, "conv1", 16, 3, 3)
    for s in (1, 2, 3):
        for b in range(n):
            cin, cout = (widths[s - 1] if b == 0 else widths[s]), widths[s]
            p = f"{stage}{s}.layer.{b}"
            _bn(t, f"{p}.bn1", cin)
            _conv(t, f"{p}.conv1", cout, cin, 3)
            _bn(t, f"{p}.bn2", cout)
            _conv(t, f"{p}.conv2", cout, cout, 3)
            if cin != cout:
                _conv(t, f"{p}.convShortcut", cout, cin, 1)
    _bn(t, "bn1", widths[3])
    _linear(t, head, classes, widths[3])
    return t


RD_VGG_CFG = {"vgg8": [[64], [128], [256], [512], [512]],
              "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
              "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


def rd_vgg(name: str, classes: int) -> Table:
    """RD vgg.py ``*_bn``: blockK = [conv(bias), BN, ReLU] per width, last ReLU dropped."""
    t: Table = OrderedDict()
    cin = 3
    for i, widths in enumerate(RD_VGG_CFG[name]):
        for j, v in enumerate(widths):
            _conv(t, f"block{i}.{3 * j}", v, cin, 3, bias=True)
            _bn(t, f"block{i}.{3 * j + 1}", v)
            cin = v
    _linear(t, "classifier", classes, 512)
    return t


def kc_vgg(cfg: Sequence, classes: int) -> Table:
    """KC cifar10/vgg.py: ``features`` = conv(bias), BN, ReLU per width, MaxPool per 'M'."""
    t: Table = OrderedDict()
    idx, cin = 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        _conv(t, f"features.{idx}", v, cin, 3, bias=True)
        _bn(t, f"features.{idx + 1}", v)
        idx, cin = idx + 3, v
    _linear(t, "classifier", classes, 512)
    return t


_MBV2 = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
         (6, 320, 1, 1)]


def rd_mobilenetv2(width: float, classes: int) -> Table:
    """RD mobilenetv2.py mobilenetv2_T_w(6, width): the 1x1 expansion is kept for t = 1."""
    t: Table = OrderedDict()
    cin = int(32 * width)
    _conv(t, "conv1.0", cin, 3, 3)
    _bn(t, "conv1.1", cin)
    for g, (e, c, n, _) in enumerate(_MBV2):
        for i in range(n):
            hid, cout, p = cin * e, int(c * width), f"blocks.{g}.{i}.conv"
            _conv(t, f"{p}.0", hid, cin, 1)
            _bn(t, f"{p}.1", hid)
            t[f"{p}.3.weight"] = (hid, 1, 3, 3)
            _bn(t, f"{p}.4", hid)
            _conv(t, f"{p}.6", cout, hid, 1)
            _bn(t, f"{p}.7", cout)
            cin = cout
    _conv(t, "conv2.0", 1280, cin, 1)
    _bn(t, "conv2.1", 1280)
    _linear(t, "classifier.0", classes, 1280)
    return t


def fd_mobilenetv2(classes: int) -> Table:
    """FD classifiers/mobilenetv2.py (torchvision's layout, width 1): ``features.N``, no expansion
    conv when t = 1, ``classifier.1``; the second group has stride 2 (irrelevant to names)."""
    t: Table = OrderedDict()
    _conv(t, "features.0.0", 32, 3, 3)
    _bn(t, "features.0.1", 32)
    idx, cin = 1, 32
    for e, c, n, _ in _MBV2:
        for _i in range(n):
            hid, p, j = cin * e, f"features.{idx}.conv", 0
            if e != 1:
                _conv(t, f"{p}.0.0", hid, cin, 1)
                _bn(t, f"{p}.0.1", hid)
                j = 1
            t[f"{p}.{j}.0.weight"] = (hid, 1, 3, 3)
            _bn(t, f"{p}.{j}.1", hid)
            _conv(t, f"{p}.{j + 1}", c, hid, 1)
            _bn(t, f"{p}.{j + 2}", c)
            idx, cin = idx + 1, c
    _conv(t, f"features.{idx}.0", 1280, 320, 1)
    _bn(t, f"features.{idx}.1", 1280)
    _linear(t, "classifier.1", classes, 1280)
    return t


def rd_shufflev1(classes: int) -> Table:
    """RD ShuffleNetv1.py ShuffleV1: out 240/480/960, blocks 4/8/4, groups 3."""
    t: Table = OrderedDict()
    _conv(t, "conv1", 24, 3, 1)
    _bn(t, "bn1", 24)
    cin = 24
    for s, (out, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), 1):
        for i in range(n):
            outp = out - (cin if i == 0 else 0)
            mid, g, p = outp // 4, 1 if cin == 24 else 3, f"layer{s}.{i}"
            _conv(t, f"{p}.conv1", mid, cin // g, 1)
            _bn(t, f"{p}.bn1", mid)
            t[f"{p}.conv2.weight"] = (mid, 1, 3, 3)
            _bn(t, f"{p}.bn2", mid)
            _conv(t, f"{p}.conv3", outp, mid // 3, 1)
            _bn(t, f"{p}.bn3", outp)
            cin = out
    _linear(t, "linear", classes, 960)
    return t


def rd_shufflev2(classes: int) -> Table:
    """RD ShuffleNetv2.py ShuffleV2 (net_size 1); FD uses the same file (shuffle_v2)."""
    t: Table = OrderedDict()
    _conv(t, "conv1", 24, 3, 1)
    _bn(t, "bn1", 24)
    cin = 24
    for s, (out, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), 1):
        mid, p = out // 2, f"layer{s}.0"
        t[f"{p}.conv1.weight"] = (cin, 1, 3, 3)
        _bn(t, f"{p}.bn1", cin)
        _conv(t, f"{p}.conv2", mid, cin, 1)
        _bn(t, f"{p}.bn2", mid)
        _conv(t, f"{p}.conv3", mid, cin, 1)
        _bn(t, f"{p}.bn3", mid)
        t[f"{p}.conv4.weight"] = (mid, 1, 3, 3)
        _bn(t, f"{p}.bn4", mid)
        _conv(t, f"{p}.conv5", mid, mid, 1)
        _bn(t, f"{p}.bn5", mid)
        for i in range(1, n + 1):
            p = f"layer{s}.{i}"
            _conv(t, f"{p}.conv1", mid, mid, 1)
            _bn(t, f"{p}.bn1", mid)
            t[f"{p}.conv2.weight"] = (mid, 1, 3, 3)
            _bn(t, f"{p}.bn2", mid)
            _conv(t, f"{p}.conv3", mid, mid, 1)
            _bn(t, f"{p}.bn3", mid)
        cin = out
    _conv(t, "conv2", 1024, 464, 1)
    _bn(t, "bn2", 1024)
    _linear(t, "linear", classes, 1024)
    return t


KC_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

# (registry name, classes, reference table)
RD_CASES = [
    ("resnet8x4", 100, lambda: bearpaw_resnet(8, (32, 64, 128, 256), 100)),
    ("resnet32x4", 100, lambda: bearpaw_resnet(32, (32, 64, 128, 256), 100)),
    ("resnet56", 100, lambda: bearpaw_resnet(56, (16, 16, 32, 64), 100)),
    ("wrn_40_2", 100, lambda: wide_resnet(40, 2, 100)),
    ("wrn_16_2", 100, lambda: wide_resnet(16, 2, 100)),
    ("vgg13", 100, lambda: rd_vgg("vgg13", 100)),
    ("vgg8", 100, lambda: rd_vgg("vgg8", 100)),
    ("MobileNetV2", 100, lambda: rd_mobilenetv2(0.5, 100)),
    ("mobile_full", 100, lambda: rd_mobilenetv2(1.0, 100)),
    ("ShuffleV1", 100, lambda: rd_shufflev1(100)),
    ("ShuffleV2", 100, lambda: rd_shufflev2(100)),
    ("ResNet50", 100, lambda: kuangliu_resnet(True, (3, 4, 6, 3), (64, 128, 256, 512), 2048, 100)),
]
FD_CASES = [  # FD spellings; networks also in RD_CASES reuse their build
    ("wrn40_2", 100, lambda: wide_resnet(40, 2, 100)),
    ("wrn16_1", 10, lambda: wide_resnet(16, 1, 10)),
    ("resnet8x4", 100, lambda: bearpaw_resnet(8, (32, 64, 128, 256), 100)),  # resnet_tiny.py
    ("vgg11", 100, lambda: rd_vgg("vgg11", 100)),
    ("resnet18", 10, lambda: kuangliu_resnet(False, (2, 2, 2, 2), (64, 128, 256, 512), 512, 10)),
    ("shufflenetv2", 100, lambda: rd_shufflev2(100)),
    # FD's CIFAR 'mobilenetv2' is torchvision's net: it is mobilenetv2_imagenet here
    ("mobilenetv2_imagenet", 10, lambda: fd_mobilenetv2(10)),
]
KC_CASES = [
    ("kc_resnet8", 10, lambda: kuangliu_resnet(False, (1, 1, 1), (16, 32, 64), 256, 10)),
    ("resnet26", 10, lambda: kuangliu_resnet(False, (4, 4, 4), (16, 32, 64), 256, 10)),
    ("resnet10", 10, lambda: kuangliu_resnet(False, (1, 1, 1, 1), (64, 128, 256, 512), 512, 10)),
    ("WRN22_4", 10, lambda: wide_resnet(22, 4, 10, "layer", "linear")),
    ("WRN10_1", 10, lambda: wide_resnet(10, 1, 10, "layer", "linear")),
    ("WRN16_4", 100, lambda: wide_resnet(16, 4, 100, "layer", "linear")),
    ("kc_vgg11", 10, lambda: kc_vgg(KC_VGG11, 10)),
    ("resnet20_sm", 10, lambda: bearpaw_resnet(20, (16, 16, 32, 64), 10)),  # cifar10sm
]


def random_state(table: Table, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors of the table's shapes (BN variances positive, counters integer)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in table.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


def built(name: str, classes: int):
    return _built(canonical_name(name), classes)


@functools.lru_cache(maxsize=None)
def _built(name: str, classes: int):
    return get_model(name, num_classes=classes)


def layout(family: str, sd: Dict[str, torch.Tensor]) -> dict:
    """A checkpoint as each seed's training script writes it."""
    if family == "rd":  # RD train_teacher.py: state = {'epoch', 'model', 'accuracy', 'optimizer'}
        return {"epoch": 240, "model": sd, "accuracy": 75.6, "optimizer": {"state": {}}}
    prefixed = {f"module.{k}": v for k, v in sd.items()}  # DataParallel
    if family == "fd":
        return {"epoch": 200, "arch": "x", "state_dict": prefixed, "best_acc1": 0.9}
    return {"epoch": 99, "model_state_dict": prefixed,  # KC: create_model wraps DataParallel
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1}]}}


CASES = ([("rd",) + c for c in RD_CASES] + [("fd",) + c for c in FD_CASES]
         + [("kc",) + c for c in KC_CASES])


@pytest.mark.parametrize("family,name,classes,table", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_reference_layout_matches_and_loads(family, name, classes, table):
    expected = table()
    model = built(name, classes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == dict(expected)
    sd = random_state(expected)
    load_weights(model, layout(family, sd))
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())


def test_checkpoint_files_load_by_path(tmp_path):
    for family, name, classes, table in [("rd", "resnet8x4", 100, RD_CASES[0][2]),
                                         ("fd", "wrn16_1", 10, FD_CASES[1][2]),
                                         ("kc", "WRN10_1", 10, KC_CASES[4][2])]:
        sd = random_state(table(), seed=3)
        path = tmp_path / f"{family}.pth"
        torch.save(layout(family, sd), path)
        model = load_weights(get_model(name, num_classes=classes), str(path))
        assert torch.equal(model.state_dict()["conv1.weight"], sd["conv1.weight"])


RD_MODEL_DICT = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                 "resnet110", "resnet8x4", "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2",
                 "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
                 "mobile_half", "mobile_full", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
KC_MODEL_FACTORY = ["WRN10_4", "WRN16_1", "WRN16_2", "WRN16_4", "WRN16_8", "WRN28_2", "WRN22_4",
                    "WRN22_8", "WRN28_1", "WRN10_1", "WRN40_1", "WRN40_4", "resnet8_sm",
                    "resnet14_sm", "resnet20_sm", "resnet32_sm", "resnet44_sm", "resnet56_sm",
                    "resnet110_sm", "resnet10", "resnet26", "resnet18_v", "resnet34_v",
                    "resnet50_v"]


@pytest.mark.parametrize("name", RD_MODEL_DICT + KC_MODEL_FACTORY)
def test_seed_names_resolve(name):
    canonical_name(name)


def test_distiller_networks_do_not_take_repdistiller_names():
    # Distiller's resnet8 / resnet20 / vgg11 are other networks than RD's of the same name
    for kc, rd in [("kc_resnet8", "resnet8"), ("kc_resnet20", "resnet20"), ("kc_vgg11", "vgg11"),
                   ("WRN16_2", "wrn16_2")]:
        assert canonical_name(kc) != canonical_name(rd)
    # resnet*_sm (KC cifar10sm) *are* RD's nets
    assert canonical_name("resnet56_sm") == canonical_name("resnet56")


@pytest.mark.parametrize("ckpt_name,ckpt_table,wrong_name,missing,unexpected", [
    ("kc_resnet8", lambda: kuangliu_resnet(False, (1, 1, 1), (16, 32, 64), 256, 10), "resnet8",
     "fc.weight", "linear.weight"),
    ("WRN16_2", lambda: wide_resnet(16, 2, 10, "layer", "linear"), "wrn16_2",
     "block1.layer.0.bn1.weight", "layer1.layer.0.bn1.weight"),
])
def test_other_family_checkpoint_is_rejected_with_key_names(ckpt_name, ckpt_table, wrong_name,
                                                            missing, unexpected):
    ckpt = layout("kc", random_state(ckpt_table()))
    load_weights(get_model(ckpt_name, num_classes=10), ckpt)  # its own family takes it
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(get_model(wrong_name, num_classes=10), ckpt)
    assert missing in err.value.missing and unexpected in err.value.unexpected
    assert missing in str(err.value) and unexpected in str(err.value)


# ---------------------------------------------------------------------------------------------
# Functions, against forwards written here from the references' forward().

def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], training=False, eps=1e-5)


def _conv_bn(x, sd, conv, bn, stride=1, pad=1):
    return _bn_eval(F.conv2d(x, sd[f"{conv}.weight"], sd.get(f"{conv}.bias"), stride, pad), sd, bn)


def akamaster_reference(x: torch.Tensor, sd: Dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """akamaster resnet.py forward, option A: F.pad(x[:, :, ::2, ::2], (0,0,0,0, p/4, p/4))."""
    out = F.relu(_conv_bn(x, sd, "conv1", "bn1"))
    for s in (1, 2, 3):
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            y = F.relu(_conv_bn(out, sd, f"{p}.conv1", f"{p}.bn1", stride))
            y = _conv_bn(y, sd, f"{p}.conv2", f"{p}.bn2")
            planes = y.shape[1]
            short = out if out.shape[1] == planes and stride == 1 else F.pad(
                out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
            out = F.relu(y + short)
    out = F.avg_pool2d(out, out.size(3)).view(out.size(0), -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def _with_bn_counters(model, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The BN counters an old-PyTorch checkpoint lacks (what ``load_state_dict`` itself fills)."""
    filled = dict(sd)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            filled.setdefault(k, torch.zeros_like(v))
    return filled


needs_akamaster = pytest.mark.skipif(not os.path.isfile(AKAMASTER),
                                     reason=f"{AKAMASTER} (../shared/ckpt) is not present")


@needs_akamaster
def test_akamaster_checkpoint_differs_only_by_the_bn_counters():
    ckpt = load_checkpoint(AKAMASTER)
    assert abs(ckpt["best_prec1"] - 91.78) < 0.01
    sd = extract_state_dict(ckpt)  # strips DataParallel's 'module.'
    own = get_model("resnet20_a", num_classes=10).state_dict()
    absent = [k for k in own if k not in sd]
    assert len(absent) == 19 and all(k.endswith("num_batches_tracked") for k in absent)  # stem BN + 9 blocks x 2
    check_fit(get_model("resnet20_a", num_classes=10), sd)  # tolerated: only the BN counters are absent
    sd.pop("layer1.0.bn1.running_mean")
    with pytest.raises(CheckpointMismatchError) as err:  # any other absent key still fails
        check_fit(get_model("resnet20_a", num_classes=10), sd)
    assert err.value.missing == ["layer1.0.bn1.running_mean"]


@needs_akamaster
def test_akamaster_checkpoint_loads_and_computes_its_network():
    ckpt = load_checkpoint(AKAMASTER)
    model = get_model("resnet20_a", num_classes=10).eval()
    sd = extract_state_dict(ckpt)
    load_weights(model, {"state_dict": _with_bn_counters(model, sd), "best_prec1": 91.78})
    # images normalised with the ImageNet statistics akamaster trained with
    torch.manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.rand(4, 3, 32, 32) - mean) / std
    with torch.no_grad():
        ours, ref = model(x), akamaster_reference(x, sd, 3)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert ours.std(0).abs().sum() > 0  # the four inputs are told apart


@needs_akamaster
def test_akamaster_checkpoint_loads_by_path():
    model = load_weights(get_model("resnet20_a", num_classes=10), AKAMASTER)
    sd = torch.load(AKAMASTER, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, sd["module.conv1.weight"])


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    got = PadShortcut(8)(x).numpy()
    xn = x.numpy()
    assert got.shape == (2, 32, 4, 4)
    for c in range(32):
        for i in range(4):
            for j in range(4):
                want = xn[:, c - 8, 2 * i, 2 * j] if 8 <= c < 24 else 0.0
                assert (got[:, c, i, j] == want).all()
    block = OptionABlock(16, 32, stride=2).eval()
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(branch + torch.from_numpy(got)), atol=1e-6)


def kc_small_reference(x: torch.Tensor, sd: Dict[str, torch.Tensor], n: int,
                       block_relu: bool = False) -> torch.Tensor:
    """KC cifar10/resnet.py ResNetSmall.forward: ReLU after the stem and after each stage, blocks
    end without a ReLU (``block_relu=True``: the usual ReLU after every block), avg_pool2d(., 4)
    flattened into the 256-wide linear."""
    out = F.relu(_conv_bn(x, sd, "conv1", "bn1"))
    for s in (1, 2, 3):
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            y = F.relu(_conv_bn(out, sd, f"{p}.conv1", f"{p}.bn1", stride))
            y = _conv_bn(y, sd, f"{p}.conv2", f"{p}.bn2")
            short = (_conv_bn(out, sd, f"{p}.shortcut.0", f"{p}.shortcut.1", stride, 0)
                     if f"{p}.shortcut.0.weight" in sd else out)
            out = F.relu(y + short) if block_relu else y + short
        out = F.relu(out)
    out = F.avg_pool2d(out, 4).view(out.size(0), -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def test_distiller_resnet_small_computes_its_network():
    sd = random_state(kuangliu_resnet(False, (2, 2, 2), (16, 32, 64), 256, 10), seed=5)
    model = get_model("kc_resnet14", num_classes=10).eval()
    load_weights(model, layout("kc", sd))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, ref = model(x), kc_small_reference(x, sd, 2)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    # the test can tell: a ReLU after every block gives other logits
    assert not torch.allclose(ours, kc_small_reference(x, sd, 2, block_relu=True), atol=1e-3)


def kc_wrn_to_rd(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """KC wide_resnet_ab.py names -> RD wrn.py names (the only difference between the two)."""
    out = {}
    for k, v in sd.items():
        for i in (1, 2, 3):
            if k.startswith(f"layer{i}."):
                k = f"block{i}." + k[len(f"layer{i}."):]
        out["fc." + k[len("linear."):] if k.startswith("linear.") else k] = v
    return out


def test_distiller_wrn_is_repdistillers_wrn_under_other_names():
    sd = random_state(wide_resnet(16, 1, 10, "layer", "linear"), seed=9)
    kc = load_weights(get_model("WRN16_1", num_classes=10), layout("kc", sd)).eval()
    rd = load_weights(get_model("wrn16_1", num_classes=10), {"model": kc_wrn_to_rd(sd)}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(kc(x), rd(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# registry/check_teachers.py

def _write(path, ckpt) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(ckpt, path)


def test_check_teachers_accepts_repdistiller_layout(tmp_path, capsys):
    root = tmp_path / "save" / "models"
    _write(str(root / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"),
           layout("rd", random_state(bearpaw_resnet(8, (32, 64, 128, 256), 100))))
    _write(str(root / "wrn_16_2_vanilla" / "ckpt_epoch_240.pth"),
           layout("rd", random_state(wide_resnet(16, 2, 10))))  # a CIFAR-10 teacher
    assert check_teachers.main([str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK") and "resnet8x4 (100 classes)" in out[0]
    assert out[1].startswith("OK") and "wrn16_2 (10 classes)" in out[1]
    assert out[2] == "2 of 2 teacher checkpoints load into their registry architecture"


def test_check_teachers_reports_mismatching_keys(tmp_path, capsys):
    root = tmp_path / "models"
    sd = random_state(rd_vgg("vgg8", 100))
    sd["fc.weight"], sd["fc.bias"] = sd.pop("classifier.weight"), sd.pop("classifier.bias")
    _write(str(root / "vgg8_vanilla" / "ckpt_epoch_240.pth"), layout("rd", sd))
    _write(str(root / "mystery" / "teacher.pth"),
           layout("rd", random_state(rd_vgg("vgg8", 100))))
    assert check_teachers.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "vgg8_vanilla" in out
    assert "missing keys (2): classifier.weight, classifier.bias" in out
    assert "unexpected keys (2): fc.weight, fc.bias" in out
    assert "cannot tell the architecture" in out and "mystery" in out
    assert "0 of 2 teacher checkpoints load" in out


def test_check_teachers_with_nothing_to_check(tmp_path, capsys):
    assert check_teachers.main([str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# scripts/fetch_pretrained_teachers.sh

RD_TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _run_fetch(args: List[str], url: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RD_TEACHER_URL=url, RD_TEACHER_TIMEOUT="3")
    return subprocess.run(["bash", FETCH] + args, capture_output=True, text=True, env=env,
                          timeout=60)


def test_fetch_offline_fails_in_one_line(tmp_path):
    dest = tmp_path / "teachers"
    res = _run_fetch(["--dest", str(dest)], "http://127.0.0.1:9/")
    assert res.returncode != 0
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "http://127.0.0.1:9/wrn_40_2_vanilla/ckpt_epoch_240.pth" in lines[0]
    assert "offline" in lines[0] and "by hand" in lines[0]
    assert "Traceback" not in lines[0]
    assert not dest.exists() or not any(dest.rglob("*.pth*"))


def test_fetch_downloads_into_repdistiller_layout(tmp_path):
    served = tmp_path / "served"
    for arch in RD_TEACHERS:
        (served / f"{arch}_vanilla").mkdir(parents=True)
        (served / f"{arch}_vanilla" / "ckpt_epoch_240.pth").write_bytes(arch.encode())
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        dest = tmp_path / "save" / "models"
        res = _run_fetch(["--dest", str(dest), "--no-check"], url)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 0, res.stderr
    for arch in RD_TEACHERS:
        assert (dest / f"{arch}_vanilla" / "ckpt_epoch_240.pth").read_bytes() == arch.encode()
    # everything present: nothing to download, so an unreachable server does not matter
    again = _run_fetch(["--dest", str(dest), "--no-check"], "http://127.0.0.1:9/")
    assert again.returncode == 0, again.stderr

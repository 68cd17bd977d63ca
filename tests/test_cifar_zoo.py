"""chenyaofo's pytorch-cifar-models (``cy_*``, hub aliases ``cifar10_*`` / ``cifar100_*``).

The expected state-dict names and shapes are rebuilt here from a reading of chenyaofo/
pytorch-cifar-models ``pytorch_cifar_models/{resnet, vgg, mobilenetv2, shufflenetv2, repvgg}.py``
(torchvision-style ``features`` / ``classifier`` indices, RepVGG's training-time ``rbr_*``
branches), independently of :mod:`registry.models.cifar_zoo`, for 10 and 100 classes. A plain
state dict in that layout (what upstream's release files hold) loads with ``load_weights``;
forwards of the smallest model of each family are checked against forwards written here with
``torch.nn.functional``. Parameter counts are the README's #Params column.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import pytest
from keytables import Table, _bn, _conv, _linear
import torch
import torch.nn.functional as F

from engine.checkpoint import load_weights
from engine.hooks import FeatureTaps
from registry.models import canonical_name, get_model, list_models
from registry.models import cifar_zoo
from registry.models._factory import _MODELS

pytestmark = pytest.mark.usefixtures("one_thread")




# ---------------------------------------------------------------------------------------------
# Upstream layouts, from pytorch_cifar_models/*.py

def resnet_table(depth: int, nc: int) -> Table:
    """resnet.py CifarResNet: conv1/bn1, layer1..3 of BasicBlocks (downsample = 1x1 conv + BN
    when stride or width changes), fc."""
    t: Table = OrderedDict()
    _conv(t, "conv1", 16, 3, 3)
    _bn(t, "bn1", 16)
    cin = 16
    for s, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
        for b in range((depth - 2) // 6):
            p = f"layer{s}.{b}"
            _conv(t, f"{p}.conv1", planes, cin, 3)
            _bn(t, f"{p}.bn1", planes)
            _conv(t, f"{p}.conv2", planes, planes, 3)
            _bn(t, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or cin != planes):
                _conv(t, f"{p}.downsample.0", planes, cin, 1)
                _bn(t, f"{p}.downsample.1", planes)
            cin = planes
    _linear(t, "fc", nc, 64)
    return t


VGG_CFG = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"],
}


def vgg_table(cfg: Sequence, nc: int) -> Table:
    """vgg.py make_layers(batch_norm=True): conv(bias), BN, ReLU per number, MaxPool per 'M';
    classifier Linear(512, 512), ReLU, Dropout, Linear(512, 512), ReLU, Dropout, Linear."""
    t: Table = OrderedDict()
    idx, cin = 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        _conv(t, f"features.{idx}", v, cin, 3, bias=True)
        _bn(t, f"features.{idx + 1}", v)
        idx, cin = idx + 3, v
    _linear(t, "classifier.0", 512, 512)
    _linear(t, "classifier.3", 512, 512)
    _linear(t, "classifier.6", nc, 512)
    return t


# width -> (stem, channels of the seven groups, head), _make_divisible(c * width, 8) by hand
MBV2_CHANNELS = {
    "mobilenetv2_x0_5": (16, (8, 16, 16, 32, 48, 80, 160), 1280),
    "mobilenetv2_x0_75": (24, (16, 24, 24, 48, 72, 120, 240), 1280),
    "mobilenetv2_x1_0": (32, (16, 24, 32, 64, 96, 160, 320), 1280),
    "mobilenetv2_x1_4": (48, (24, 32, 48, 88, 136, 224, 448), 1792),
}
MBV2_TNS = ((1, 1, 1), (6, 2, 1), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1))  # t, n, s


def mbv2_table(model: str, nc: int) -> Table:
    """mobilenetv2.py (torchvision layout): features.0 ConvBNReLU, features.1..17 inverted
    residuals (``conv``: [pw ConvBNReLU], dw ConvBNReLU, Conv2d, BN), features.18 ConvBNReLU,
    classifier = Dropout, Linear."""
    stem, chans, head = MBV2_CHANNELS[model]
    t: Table = OrderedDict()
    _conv(t, "features.0.0", stem, 3, 3)
    _bn(t, "features.0.1", stem)
    i, cin = 1, stem
    for (e, n, _), cout in zip(MBV2_TNS, chans):
        for _ in range(n):
            p, hid = f"features.{i}.conv", cin * e
            j = 0
            if e != 1:
                _conv(t, f"{p}.0.0", hid, cin, 1)
                _bn(t, f"{p}.0.1", hid)
                j = 1
            t[f"{p}.{j}.0.weight"] = (hid, 1, 3, 3)
            _bn(t, f"{p}.{j}.1", hid)
            _conv(t, f"{p}.{j + 1}", cout, hid, 1)
            _bn(t, f"{p}.{j + 2}", cout)
            i, cin = i + 1, cout
    _conv(t, "features.18.0", head, cin, 1)
    _bn(t, "features.18.1", head)
    _linear(t, "classifier.1", nc, head)
    return t


SHUFFLE_CHANNELS = {
    "shufflenetv2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenetv2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenetv2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenetv2_x2_0": (24, 244, 488, 976, 2048),
}


def shuffle_table(model: str, nc: int) -> Table:
    """shufflenetv2.py (torchvision layout, stride-1 3x3 stem, no max-pool): conv1, stage2..4
    of 4 / 8 / 4 units (branch1 only in the stride-2 first unit), conv5, fc."""
    ch = SHUFFLE_CHANNELS[model]
    t: Table = OrderedDict()
    _conv(t, "conv1.0", ch[0], 3, 3)
    _bn(t, "conv1.1", ch[0])
    cin = ch[0]
    for s, (reps, cout) in enumerate(zip((4, 8, 4), ch[1:4]), 2):
        mid = cout // 2
        for u in range(reps):
            p = f"stage{s}.{u}"
            if u == 0:
                t[f"{p}.branch1.0.weight"] = (cin, 1, 3, 3)
                _bn(t, f"{p}.branch1.1", cin)
                _conv(t, f"{p}.branch1.2", mid, cin, 1)
                _bn(t, f"{p}.branch1.3", mid)
            _conv(t, f"{p}.branch2.0", mid, cin if u == 0 else mid, 1)
            _bn(t, f"{p}.branch2.1", mid)
            t[f"{p}.branch2.3.weight"] = (mid, 1, 3, 3)
            _bn(t, f"{p}.branch2.4", mid)
            _conv(t, f"{p}.branch2.5", mid, mid, 1)
            _bn(t, f"{p}.branch2.6", mid)
        cin = cout
    _conv(t, "conv5.0", ch[4], cin, 1)
    _bn(t, "conv5.1", ch[4])
    _linear(t, "fc", nc, ch[4])
    return t


# stage0 width, stage1..4 widths (min(64, 64a); 64a, 128a, 256a, 512b)
REPVGG_CHANNELS = {"repvgg_a0": (48, (48, 96, 192, 1280)), "repvgg_a1": (64, (64, 128, 256, 1280)),
                   "repvgg_a2": (64, (96, 192, 384, 1408))}


def repvgg_table(model: str, nc: int) -> Table:
    """repvgg.py with deploy=False: every block rbr_dense (conv + bn, 3x3), rbr_1x1 (conv + bn),
    rbr_identity (BN) when in == out channels at stride 1; stage0, stage1..4 of 2/4/14/1, linear."""
    c0, widths = REPVGG_CHANNELS[model]
    t: Table = OrderedDict()

    def block(p: str, cin: int, cout: int, stride: int) -> None:
        if cin == cout and stride == 1:
            _bn(t, f"{p}.rbr_identity", cin)
        _conv(t, f"{p}.rbr_dense.conv", cout, cin, 3)
        _bn(t, f"{p}.rbr_dense.bn", cout)
        _conv(t, f"{p}.rbr_1x1.conv", cout, cin, 1)
        _bn(t, f"{p}.rbr_1x1.bn", cout)

    block("stage0", 3, c0, 1)
    cin = c0
    for s, (n, cout, stride) in enumerate(zip((2, 4, 14, 1), widths, (1, 2, 2, 2)), 1):
        for b in range(n):
            block(f"stage{s}.{b}", cin, cout, stride if b == 0 else 1)
            cin = cout
    _linear(t, "linear", nc, widths[-1])
    return t


# name (upstream, without dataset) -> (expected table builder, stages, classifier input, README
# #Params in millions for CIFAR-10 and CIFAR-100)
MODELS = OrderedDict()
for _d, _p in zip((20, 32, 44, 56), ((0.27, 0.28), (0.47, 0.47), (0.66, 0.67), (0.86, 0.86))):
    MODELS[f"resnet{_d}"] = (lambda nc, d=_d: resnet_table(d, nc), 3, 64, _p)
for _m, _p in zip(VGG_CFG, ((9.76, 9.80), (9.94, 9.99), (15.25, 15.30), (20.57, 20.61))):
    MODELS[_m] = (lambda nc, m=_m: vgg_table(VGG_CFG[m], nc), 4, 512, _p)
for _m, _p in zip(MBV2_CHANNELS, ((0.70, 0.82), (1.37, 1.48), (2.24, 2.35), (4.33, 4.50))):
    MODELS[_m] = (lambda nc, m=_m: mbv2_table(m, nc), 4, MBV2_CHANNELS[_m][2], _p)
for _m, _p in zip(SHUFFLE_CHANNELS, ((0.35, 0.44), (1.26, 1.36), (2.49, 2.58), (5.37, 5.55))):
    MODELS[_m] = (lambda nc, m=_m: shuffle_table(m, nc), 3, SHUFFLE_CHANNELS[_m][4], _p)
for _m, _p in zip(REPVGG_CHANNELS, ((7.84, 7.96), (12.82, 12.94), (26.82, 26.94))):
    MODELS[_m] = (lambda nc, m=_m: repvgg_table(m, nc), 4, REPVGG_CHANNELS[_m][1][-1], _p)


def upstream_checkpoint(table: Table) -> Dict[str, torch.Tensor]:
    """A plain state dict in the upstream layout, built from the table alone: conv / Linear
    weights 1/fan-in (+ a per-key offset), BN identity, counters 7."""
    sd = {}
    for i, (k, shape) in enumerate(table.items()):
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var") or (len(shape) == 1 and k.endswith("weight")):
            sd[k] = torch.ones(shape)
        elif len(shape) == 1:
            sd[k] = torch.full(shape, 1e-3 * (i % 5))
        else:
            sd[k] = torch.full(shape, 1.0 / math.prod(shape[1:]) + 1e-4 * (i % 7))
    return sd


# ---------------------------------------------------------------------------------------------

def test_the_names_and_aliases():
    ours = [n for n in list_models() if n.startswith("cy_")]
    assert sorted(ours) == sorted(f"cy_{m}" for m in MODELS)
    for m in MODELS:
        for alias in (f"cifar10_{m}", f"cifar100_{m}"):
            assert canonical_name(alias) == f"cy_{m}"
    # the plain names stay the other code bases' networks
    for plain in ("resnet20", "vgg11_bn", "mobilenetv2", "shufflenetv2"):
        assert not canonical_name(plain).startswith("cy_")


@pytest.mark.parametrize("nc", [10, 100])
@pytest.mark.parametrize("model", list(MODELS))
def test_state_dict_is_upstreams_and_a_plain_checkpoint_loads(model, nc, tmp_path):
    table_fn, stages, head_in, params = MODELS[model]
    expected = table_fn(nc)
    net = get_model(f"cy_{model}", num_classes=nc).eval()  # the one build for this class count
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == dict(expected), (sorted(set(got) ^ set(expected)),
                                   {k: (got[k], expected[k]) for k in got
                                    if k in expected and got[k] != expected[k]})
    n_params = sum(p.numel() for p in net.parameters()) / 1e6
    assert round(n_params, 2) == params[0 if nc == 10 else 1]

    sd = upstream_checkpoint(expected)
    if model in ("resnet20", "mobilenetv2_x0_5", "shufflenetv2_x0_5", "repvgg_a0", "vgg11_bn"):
        path = tmp_path / f"cifar{nc}_{model}-0000.pt"
        torch.save(sd, path)  # as torch.hub serves it: the bare state dict
        load_weights(net, str(path))
    else:
        load_weights(net, sd)
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())

    with torch.no_grad(), FeatureTaps(net) as taps:
        y = net(torch.randn(2, 3, 32, 32))
        feats = dict(taps.features)
    assert y.shape == (2, nc) and torch.isfinite(y).all()
    assert list(net.feature_taps) == (["stem"] + [f"stage{i}" for i in range(1, stages + 1)]
                                      + [f"preact{i}" for i in range(1, stages + 1)] + ["pool"])
    assert feats["pool"].shape == (2, head_in)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # pool is the feature the last Linear reads
        assert torch.allclose(last(feats["pool"]), y, atol=1e-5)
    sizes = [feats[f"stage{i}"].shape[-1] for i in range(1, stages + 1)]
    assert sizes == sorted(sizes, reverse=True)  # resolution never grows along the stages
    for i in range(1, stages + 1):
        assert feats[f"preact{i}"].shape == feats[f"stage{i}"].shape


def test_the_training_normalisation_comes_with_every_name():
    # chenyaofo/image-classification-codebase conf/cifar10.conf and conf/cifar100.conf, as echoed
    # in pytorch-cifar-models logs/<dataset>/<model>/default.log
    c10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    c100 = ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))
    assert cifar_zoo.TRAIN_NORMALIZATION == {"cifar10": c10, "cifar100": c100}
    for m in MODELS:
        doc = _MODELS[f"cy_{m}"].__doc__
        assert "CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)" in doc
        assert "CIFAR-100 mean (0.5070, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2761)" in doc
        for ds in ("cifar10", "cifar100"):  # an alias names its dataset, hence its statistics
            alias = f"{ds}_{m}"
            assert alias.split("_")[0] in cifar_zoo.TRAIN_NORMALIZATION
            assert canonical_name(alias) == f"cy_{m}"


# ---------------------------------------------------------------------------------------------
# Functions: the smallest model of each family against forwards written from upstream's code

def _bnf(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], False, 0.0, 1e-5)


def ref_resnet(x, sd, n):
    x = F.relu(_bnf(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s in (1, 2, 3):
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            out = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(_bnf(out, sd, f"{p}.bn1"))
            out = _bnf(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride)
                x = _bnf(x, sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def ref_vgg(x, sd, cfg):
    idx = 0
    for v in cfg:
        if v == "M":
            x, idx = F.max_pool2d(x, 2, 2), idx + 1
        else:
            x = F.conv2d(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1)
            x, idx = F.relu(_bnf(x, sd, f"features.{idx + 1}")), idx + 3
    x = x.flatten(1)
    for i in (0, 3):
        x = F.relu(F.linear(x, sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def ref_mbv2(x, sd):
    def cbr(x, p, stride=1, groups=1):
        w = sd[f"{p}.0.weight"]
        x = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
        return F.relu6(_bnf(x, sd, f"{p}.1"))

    x = cbr(x, "features.0")
    i = 1
    for e, n, s in MBV2_TNS:
        for b in range(n):
            p, stride, inp = f"features.{i}.conv", s if b == 0 else 1, x
            j = 0
            if e != 1:
                x, j = cbr(x, f"{p}.0"), 1
            x = cbr(x, f"{p}.{j}", stride, groups=x.shape[1])
            x = _bnf(F.conv2d(x, sd[f"{p}.{j + 1}.weight"]), sd, f"{p}.{j + 2}")
            if stride == 1 and inp.shape[1] == x.shape[1]:
                x = inp + x
            i += 1
    x = cbr(x, "features.18").mean((2, 3))
    return F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"])


def _shuffle(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def ref_shufflenet(x, sd):
    def dw(x, w, stride):
        return F.conv2d(x, w, stride=stride, padding=1, groups=w.shape[0])

    x = F.relu(_bnf(F.conv2d(x, sd["conv1.0.weight"], padding=1), sd, "conv1.1"))
    for s, reps in zip((2, 3, 4), (4, 8, 4)):
        for u in range(reps):
            p = f"stage{s}.{u}"

            def branch2(z, stride):
                z = F.relu(_bnf(F.conv2d(z, sd[f"{p}.branch2.0.weight"]), sd, f"{p}.branch2.1"))
                z = _bnf(dw(z, sd[f"{p}.branch2.3.weight"], stride), sd, f"{p}.branch2.4")
                return F.relu(_bnf(F.conv2d(z, sd[f"{p}.branch2.5.weight"]), sd, f"{p}.branch2.6"))

            if u == 0:
                b1 = _bnf(dw(x, sd[f"{p}.branch1.0.weight"], 2), sd, f"{p}.branch1.1")
                b1 = F.relu(_bnf(F.conv2d(b1, sd[f"{p}.branch1.2.weight"]), sd, f"{p}.branch1.3"))
                x = _shuffle(torch.cat([b1, branch2(x, 2)], 1))
            else:
                keep, rest = x.chunk(2, 1)
                x = _shuffle(torch.cat([keep, branch2(rest, 1)], 1))
    x = F.relu(_bnf(F.conv2d(x, sd["conv5.0.weight"]), sd, "conv5.1")).mean((2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def ref_repvgg(x, sd):
    def block(x, p, stride):
        dense = F.conv2d(x, sd[f"{p}.rbr_dense.conv.weight"], stride=stride, padding=1)
        out = _bnf(dense, sd, f"{p}.rbr_dense.bn")
        out = out + _bnf(F.conv2d(x, sd[f"{p}.rbr_1x1.conv.weight"], stride=stride), sd,
                         f"{p}.rbr_1x1.bn")
        if f"{p}.rbr_identity.weight" in sd:
            out = out + _bnf(x, sd, f"{p}.rbr_identity")
        return F.relu(out)

    x = block(x, "stage0", 1)
    for s, (n, stride) in enumerate(zip((2, 4, 14, 1), (1, 2, 2, 2)), 1):
        for b in range(n):
            x = block(x, f"stage{s}.{b}", stride if b == 0 else 1)
    return F.linear(x.mean((2, 3)), sd["linear.weight"], sd["linear.bias"])


REFERENCES = {
    "resnet20": lambda x, sd: ref_resnet(x, sd, 3),
    "vgg11_bn": lambda x, sd: ref_vgg(x, sd, VGG_CFG["vgg11_bn"]),
    "mobilenetv2_x0_5": ref_mbv2,
    "shufflenetv2_x0_5": ref_shufflenet,
    "repvgg_a0": ref_repvgg,
}


@pytest.mark.parametrize("model", list(REFERENCES))
def test_forward_is_upstreams(model):
    net = get_model(f"cy_{model}", num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BN statistics away from identity, so every branch counts
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    net.eval()
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad(), FeatureTaps(net) as taps:
        ours, ref = net(x), REFERENCES[model](x, net.state_dict())
        feats = dict(taps.features)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    if model != "mobilenetv2_x0_5":  # elsewhere the stages end in a ReLU: preactK is read before it
        for k in (k for k in feats if k.startswith("stage")):
            assert feats[k].min() >= 0 and feats[k.replace("stage", "preact")].min() < 0, k

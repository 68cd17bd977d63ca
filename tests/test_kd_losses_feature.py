"""OFD, PKD and SFD against independent computations (explicit loops on small fixed tensors)."""
import math

import pytest
import torch
import torch.nn as nn

from kdtools import build
from kd.distillers import DataInfo, get_distiller_class
from kd.distillers.ofd import bn_before_taps, ofd_loss, ofd_margin, ofd_partial_l2
from kd.distillers.pkd import patience_loss
from kd.distillers.sfd import sfd_layer_loss, sfd_loss
from registry.models import get_model


class TinyConv(nn.Module):
    """Stem conv-BN-ReLU, then conv-BN-ReLU stages with named ReLUs ``act<i>`` (so ``act<i>:in``
    is the stage's pre-activation); 1x8x8 images."""

    def __init__(self, widths=(4, 6), strides=(1, 2), stem=3, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, stem, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem)
        self.stem_act = nn.ReLU()
        cin = stem
        for i, (w, s) in enumerate(zip(widths, strides), 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, w, 3, stride=s, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(w))
            setattr(self, f"act{i}", nn.ReLU())
            cin = w
        self.n = len(widths)
        self.fc = nn.Linear(cin, classes)
        self.feature_taps = {"stem": "stem_act", **{f"stage{i}": f"act{i}" for i in range(1, self.n + 1)},
                             **{f"preact{i}": f"act{i}:in" for i in range(1, self.n + 1)}, "pool": "fc:in"}

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem(x)))
        for i in range(1, self.n + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc(x.mean((2, 3)))


def tiny_data(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    info = DataInfo(num_classes=5, in_chans=1, image_size=8)
    return info, (torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 5, (batch,), generator=g))


def _scramble_bns(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            sign = torch.where(torch.rand(m.num_features, generator=g) < 0.3, -1.0, 1.0)
            m.weight.data = sign * (0.3 + torch.rand(m.num_features, generator=g))
            m.bias.data = torch.randn(m.num_features, generator=g)
    return model


# ----------------------------------------------------------------------------------------- OFD
def _margin_by_math(beta, gamma):
    s = abs(gamma)
    cdf = 0.5 * (1 + math.erf((-beta / s) / math.sqrt(2)))
    if cdf > 0.001:
        pdf = math.exp(-0.5 * (beta / s) ** 2) / math.sqrt(2 * math.pi)
        return beta - s * pdf / cdf
    return -3 * s


def test_ofd_margin_is_the_truncated_normal_mean_with_the_fallback():
    pairs = [(0.0, 1.0), (1.0, 2.0), (-0.5, 0.7), (0.3, -1.5), (2.5, 0.8), (4.0, 1.0), (3.0, 1.0)]
    beta = torch.tensor([b for b, _ in pairs])
    gamma = torch.tensor([g for _, g in pairs])
    got = ofd_margin(gamma, beta)
    for i, (b, g) in enumerate(pairs):
        assert got[i].item() == pytest.approx(_margin_by_math(b, g), rel=1e-5, abs=1e-6)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # E[x | x < 0] of N(0, 1)
    assert got[5].item() == -3.0  # Phi(-4) = 3e-5 < 0.001: the -3|gamma| fallback
    assert got[6].item() == pytest.approx(_margin_by_math(3.0, 1.0)) and got[6].item() > -3.0  # Phi(-3) = 0.00135
    assert (got < 0).all() and got.dtype == torch.float32


def test_ofd_partial_l2_skips_only_student_and_target_below_the_margin():
    margin = torch.tensor(-1.0)
    cases = [  # (student, teacher): target = max(t, m)
        (0.5, -2.0),   # s > target = m: penalised toward m
        (-1.5, -2.0),  # s <= target = m <= 0: free
        (-0.2, -0.5),  # m < t <= 0 and s > t: penalised
        (-0.8, -0.5),  # m < t <= 0 and s <= t: free
        (-3.0, 0.7),   # t > 0: always penalised
        (2.0, 0.7),
    ]
    src = torch.tensor([s for s, _ in cases])
    tgt = torch.tensor([t for _, t in cases])
    got = ofd_partial_l2(src, tgt, margin)
    for i, (s, t) in enumerate(cases):
        goal = max(t, -1.0)
        want = (s - goal) ** 2 if (s > goal or goal > 0) else 0.0
        assert got[i].item() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert (got[[1, 3]] == 0).all() and (got[[0, 2, 4, 5]] > 0).all()


def test_ofd_loss_sums_stages_halving_toward_the_input_and_pools_the_teacher():
    g = torch.Generator().manual_seed(0)
    B = 2
    srcs = [torch.randn(B, 2, 2, 2, generator=g), torch.randn(B, 3, 2, 2, generator=g)]
    tgts = [torch.randn(B, 2, 4, 4, generator=g), torch.randn(B, 3, 2, 2, generator=g)]
    margins = [torch.tensor([-0.5, -1.0]), torch.tensor([-0.2, -0.7, -1.5])]
    got = ofd_loss(srcs, tgts, margins, pool_teacher=True)
    want = 0.0
    for i, (s, t, m) in enumerate(zip(srcs, tgts, margins)):
        if t.shape[2] != s.shape[2]:  # 2x2 block means
            t = t.view(B, t.shape[1], 2, 2, 2, 2).mean((3, 5))
        stage = 0.0
        for b in range(B):
            for c in range(s.shape[1]):
                for h in range(s.shape[2]):
                    for w in range(s.shape[3]):
                        goal = max(t[b, c, h, w].item(), m[c].item())
                        sv = s[b, c, h, w].item()
                        stage += (sv - goal) ** 2 if (sv > goal or goal > 0) else 0.0
        want += stage / B / 2 ** (len(srcs) - i - 1)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_teacher_bn_rule_takes_the_residual_branch_and_fails_clearly():
    m = get_model("resnet8", num_classes=10)
    specs = [m.feature_taps[f"preact{i}"] for i in (1, 2, 3)]
    found = [n for n, _ in bn_before_taps(m, specs, [16, 32, 64], torch.zeros(2, 3, 32, 32))]
    assert found == ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]  # not layer2.0.downsample.1
    w = get_model("wrn16_1", num_classes=10)
    specs = [w.feature_taps[f"preact{i}"] for i in (1, 2, 3)]
    found = [n for n, _ in bn_before_taps(w, specs, [16, 32, 64], torch.zeros(2, 3, 32, 32))]
    assert found == ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]  # MD's get_bn_before_relu
    with pytest.raises(ValueError, match="channels"):
        bn_before_taps(m, [m.feature_taps["preact1"]], [17], torch.zeros(2, 3, 32, 32))
    lenet = get_model("lenet5", num_classes=10, in_chans=1)
    spec = [v for k, v in lenet.feature_taps.items() if k.startswith("preact")][:1]
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        bn_before_taps(lenet, spec, [6], torch.zeros(2, 1, 32, 32))


def _ofd_pair():
    torch.manual_seed(0)
    teacher = _scramble_bns(TinyConv(widths=(5, 8), strides=(1, 2))).eval()
    student = TinyConv(widths=(3, 4), strides=(2, 1))  # maps 4x4, 4x4 against the teacher's 8x8, 4x4
    return teacher, student


def test_ofd_distiller_margins_modes_and_loss():
    teacher, student = _ofd_pair()
    info, (x, y) = tiny_data()
    d = build("ofd", teacher, student, info)
    assert get_distiller_class("oh") is type(d) and (d.w.r, d.w.a, d.w.b) == (1.0, 0.0, 0.001)
    assert d.teacher_bns == ["bn1", "bn2"]
    for i, bn in enumerate((teacher.bn1, teacher.bn2)):
        want = [_margin_by_math(b, g) for b, g in zip(bn.bias.tolist(), bn.weight.tolist())]
        assert d.margins()[i].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert [c[0].out_channels for c in d.connectors] == [5, 8] and [c[0].in_channels for c in d.connectors] == [3, 4]
    d.freeze().train()
    assert d.teacher.training  # both references: the teacher's BN in train mode
    stats = teacher.bn1.running_mean.clone()
    losses = d((x, y))
    assert torch.equal(teacher.bn1.running_mean, stats)  # batch statistics used, running ones kept
    assert set(losses) == {"ce", "ofd"}
    # independent: the tapped features (teacher with batch statistics), connectors, then the loops' formula
    with torch.no_grad():
        bn1 = teacher.bn1
        z = teacher.conv1(teacher.stem_act(teacher.stem_bn(teacher.stem(x))))
        mu, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
        pre1 = (z - mu) / torch.sqrt(var + bn1.eps) * bn1.weight.view(1, -1, 1, 1) + bn1.bias.view(1, -1, 1, 1)
        assert torch.allclose(d.t_hooks.features["preact1"], pre1, atol=1e-5)
        srcs = [d.connectors[i](d.s_hooks.features[f"preact{i + 1}"]) for i in range(2)]
        tgts = [d.t_hooks.features["preact1"].view(3, 5, 4, 2, 4, 2).mean((3, 5)), d.t_hooks.features["preact2"]]
        want = 0.0
        for i, (s, t, m) in enumerate(zip(srcs, tgts, d.margins())):
            goal = torch.maximum(t, m.view(1, -1, 1, 1))
            mask = (s > goal) | (goal > 0)
            want += ((s - goal) ** 2 * mask).sum().item() / 3 / 2 ** (1 - i)
    assert losses["ofd"].item() == pytest.approx(want, rel=1e-4)
    d_eval = build("ofd", *_ofd_pair(), info, ofd_teacher_bn="eval")
    d_eval.freeze().train()
    assert not d_eval.teacher.training


def test_ofd_distiller_form_pairs_first_stages_and_needs_equal_sizes():
    teacher, student = _ofd_pair()
    info, _ = tiny_data()
    with pytest.raises(ValueError, match="ofd_form md"):
        build("ofd", teacher, student, info, ofd_form="distiller")
    torch.manual_seed(1)
    t3 = _scramble_bns(TinyConv(widths=(5, 8, 6), strides=(1, 2, 1))).eval()
    s2 = TinyConv(widths=(3, 4), strides=(1, 2))
    md = build("ofd", t3, s2, info)
    kc = build("ofd", t3, s2, info, ofd_form="distiller")
    assert md.pairs == [("preact1", "preact2"), ("preact2", "preact3")]  # MD aligns the last stages
    assert kc.pairs == [("preact1", "preact1"), ("preact2", "preact2")]  # KC the first ones
    with pytest.raises(ValueError, match="ofd_form"):
        build("ofd", t3, s2, info, ofd_form="kc")


# ----------------------------------------------------------------------------------------- PKD
def test_patience_loss_is_the_mse_of_the_concatenated_stages():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 4, 1, 1, generator=g)]
    t = [torch.randn(2, 2, 2, 2, generator=g), torch.randn(2, 8, 1, 1, generator=g)]  # same total: 16 per sample
    flat_s = [[v for f in s for v in f[b].flatten().tolist()] for b in range(2)]
    flat_t = [[v for f in t for v in f[b].flatten().tolist()] for b in range(2)]
    want = sum((a - c) ** 2 for b in range(2) for a, c in zip(flat_s[b], flat_t[b])) / 32
    assert patience_loss(s, t).item() == pytest.approx(want, rel=1e-6)


def test_pkd_distiller_defaults_loss_and_size_check():
    info, (x, y) = tiny_data()
    torch.manual_seed(0)
    teacher, student = TinyConv(widths=(4, 6)).eval(), TinyConv(widths=(4, 6))
    d = build("pkd", teacher, student, info, T=5.0)
    cls = get_distiller_class("pkd")
    assert (d.w.r, d.w.a, d.w.b) == (0.5, 0.5, 10.0) and cls.weights_distiller == cls.weights
    d.freeze().train()
    losses = d((x, y))
    assert set(losses) == {"ce", "kd", "pkd"}
    with torch.no_grad():
        fs = [d.s_hooks.features[k] for k in ("stage1", "stage2")]
        ft = [d.t_hooks.features[k] for k in ("stage1", "stage2")]
        want = sum(((a - b) ** 2).sum().item() for a, b in zip(fs, ft)) / sum(a.numel() for a in fs)
    assert losses["pkd"].item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="same size"):
        build("pkd", TinyConv(widths=(4, 8)).eval(), TinyConv(widths=(4, 6)), info)


# ----------------------------------------------------------------------------------------- SFD
def _sfd_by_loops(fs, ft, norm):
    B, C = fs.shape[:2]
    ps = [[fs[b, c].max().item() for c in range(C)] for b in range(B)]
    pt = [[ft[b, c].max().item() for c in range(C)] for b in range(B)]
    if norm == "l2":
        return max(math.sqrt(sum((ps[b][c] - pt[b][c] + 1e-6) ** 2 for c in range(C))) for b in range(B))
    return max(abs(ps[b][c] - pt[b][c] + 1e-6) for b in range(B) for c in range(C))


@pytest.mark.parametrize("norm", ["l2", "kc"])
def test_sfd_layer_loss_is_the_batch_max_of_the_pooled_distance(norm):
    g = torch.Generator().manual_seed(5)
    fs, ft = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g)  # any spatial sizes
    assert sfd_layer_loss(fs, ft, norm).item() == pytest.approx(_sfd_by_loops(fs, ft, norm), rel=1e-6)
    pair2 = (torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g))
    total = sfd_loss([fs, pair2[0]], [ft, pair2[1]], norm)
    assert total.item() == pytest.approx(_sfd_by_loops(fs, ft, norm) + _sfd_by_loops(*pair2, norm), rel=1e-6)


def test_sfd_l2_and_kc_differ_as_found_in_the_code():
    fs = torch.tensor([[[[1.0]], [[1.0]]]])  # one sample, two channels, 1x1
    ft = torch.tensor([[[[0.0]], [[0.0]]]])
    assert sfd_layer_loss(fs, ft, "l2").item() == pytest.approx(math.sqrt(2) * (1 - 1e-6), rel=1e-5)
    assert sfd_layer_loss(fs, ft, "kc").item() == pytest.approx(1.0, rel=1e-5)


def test_sfd_distiller_layers_defaults_and_channel_check():
    info, (x, y) = tiny_data()
    torch.manual_seed(0)
    teacher, student = TinyConv(widths=(4, 6), strides=(1, 1)).eval(), TinyConv(widths=(4, 6), strides=(2, 2))
    d = build("fd", teacher, student, info)
    assert get_distiller_class("sfd") is type(d) and (d.w.r, d.w.a, d.w.b) == (1.0, 0.0, 1.0)
    assert d.pairs == [("stem", "stem"), ("preact1", "preact1"), ("preact2", "preact2")]
    d.freeze().train()
    losses = d((x, y))
    assert set(losses) == {"ce", "sfd"}
    with torch.no_grad():
        want = sum(_sfd_by_loops(d.s_hooks.features[k], d.t_hooks.features[k], "l2") for k in ("stem", "preact1",
                                                                                                 "preact2"))
    assert losses["sfd"].item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="channel counts differ: preact2 6 vs preact2 8"):
        build("sfd", TinyConv(widths=(4, 8)).eval(), TinyConv(widths=(4, 6)), info)
    with pytest.raises(ValueError, match="sfd_norm"):
        build("sfd", teacher, student, info, sfd_norm="l1")

"""Hint (FitNet), AB, FT and FSP: their losses against independent computations, their wiring
(taps, modules, init stages), and two-stage runs of kd/train.py with resume."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from kdtools import build, digits_teacher_ckpt, kd_cli, tiny_batch, tiny_info
from kd import train as kdtrain
from kd.distillers import InitStage, Weights
from kd.distillers._modules import ConvReg
from kd.distillers._modules import student_feature_modules
from kd.distillers.ab import Connector, ab_layer_weights, ab_loss
from kd.distillers.fsp import fsp_loss, fsp_matrix
from kd.distillers.ft import Paraphraser, Translator, ft_loss, paraphraser_loss
from kd.distillers.hint import hint_loss
from registry.models import get_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ AB
def _ab_reference(g_s, g_t, margin):
    """Element loops over numpy arrays: the piecewise margin terms, layer weights, /B, x3/1000."""
    n, batch, total = len(g_s), g_s[0].shape[0], 0.0
    for i, (s, t) in enumerate(zip(g_s, g_t)):
        layer = 0.0
        for sv, tv in zip(s.numpy().ravel().tolist(), t.numpy().ravel().tolist()):
            if tv <= 0 and sv > -margin:
                layer += (sv + margin) ** 2
            elif tv > 0 and sv <= margin:
                layer += (sv - margin) ** 2
        total += 2.0 ** (i + 1 - n) * layer
    return total / batch * 3 / 1000


def test_ab_margin_terms_and_layer_weights_match_element_loops():
    # hand-made layer 1 covering every branch and both boundaries: (s, t)
    s1 = torch.tensor([[[[-1.5, 0.5], [-1.0, 0.3]]], [[[2.0, 1.0], [0.0, -0.2]]]])  # B=2, C=1, 2x2
    t1 = torch.tensor([[[[-1.0, -0.1], [-3.0, 0.7]]], [[[0.5, 0.2], [0.0, 4.0]]]])
    s2, t2 = _rand(2, 3, 1, 1, seed=1) * 2, _rand(2, 3, 1, 1, seed=2)
    for margin in (1.0, 0.5):
        got = ab_loss([s1, s2], [t1, t2], margin).item()
        assert got == pytest.approx(_ab_reference([s1, s2], [t1, t2], margin), rel=1e-6)
    # layer 1 by hand, m = 1: (0.5+1)^2 [s>-1, t<=0] + (0.3-1)^2 [s<=1, t>0] + (1-1)^2 + (0+1)^2 [t=0 counts as off]
    #                         + (-0.2-1)^2 [s<=1, t>0]; -1.5 and -1.0 (t<=0) and 2.0 (t>0) cost nothing
    layer1 = 1.5 ** 2 + 0.7 ** 2 + 0.0 + 1.0 + 1.2 ** 2
    assert ab_loss([s1], [t1], 1.0).item() == pytest.approx(layer1 / 2 * 3 / 1000, rel=1e-6)
    # the deepest layer weighs 1, the one below 1/2: swapping the layers changes the value
    assert ab_layer_weights(3) == [0.25, 0.5, 1.0]
    swapped = ab_loss([s2, s1], [t2, t1], 1.0).item()
    assert swapped == pytest.approx(_ab_reference([s2, s1], [t2, t1], 1.0), rel=1e-6)
    assert swapped != pytest.approx(ab_loss([s1, s2], [t1, t2], 1.0).item(), rel=1e-3)


def test_ab_connector_is_identity_where_shapes_match_and_convreg_without_relu_elsewhere():
    conn = Connector([(2, 16, 8, 8), (2, 8, 8, 8)], [(2, 16, 8, 8), (2, 32, 4, 4)])
    assert isinstance(conn.maps[0], nn.Identity)
    assert isinstance(conn.maps[1], ConvReg) and not conn.maps[1].use_relu
    out = conn([_rand(2, 16, 8, 8), _rand(2, 8, 8, 8, seed=3)])
    assert out[1].shape == (2, 32, 4, 4) and (out[1] < 0).any()  # pre-activation: no ReLU
    with pytest.raises(ValueError, match="stages"):
        Connector([(2, 8, 8, 8)], [(2, 8, 8, 8), (2, 8, 4, 4)])


def test_ab_init_stage_reads_preacts_and_trains_connector_plus_student_features_not_the_classifier():
    info = tiny_info()
    d = build("ab", info=info)
    init = d.init_stage(3)
    assert isinstance(init, InitStage) and init.epochs == 3 and init.lr is None
    stage_params = {id(p) for p in init.objective.trainable_parameters()}
    s = d.student
    assert all(id(p) not in stage_params for p in s.fc.parameters())
    assert all(id(p) in stage_params for n, p in s.named_parameters() if not n.startswith("fc."))
    assert all(id(p) in stage_params for p in d.connector.parameters())
    batch = tiny_batch(info, batch=8)
    init.objective.train()
    got = init.objective(batch)["ab"]
    g_s = d.connector([d.s_hooks.features[n] for n in ("preact1", "preact2", "preact3")])
    g_t = [d.t_hooks.features[n] for n in ("preact1", "preact2", "preact3")]
    assert got.item() == pytest.approx(_ab_reference([g.detach() for g in g_s], g_t, 1.0), rel=1e-5)


def test_ab_and_fsp_main_stage_is_ce_only_without_running_the_teacher():
    info = tiny_info()
    x, y = tiny_batch(info, batch=8)
    for method in ("ab", "fsp"):
        d = build(method, info=info)
        d.freeze().train()
        losses = d((x, y))
        assert set(losses) == {"ce"}
        assert losses["ce"].item() == pytest.approx(nn.functional.cross_entropy(d.student(x), y).item(), rel=1e-5)
        assert d.t_hooks.features == {}  # the teacher did not run at -a 0
    d = build("ab", info=info, weights=Weights(a=0.5))
    assert set(d((x, y))) == {"ce", "kd"}
    assert "connector" in d.extra_modules() and d.connector in list(d.frozen_modules())


# ------------------------------------------------------------------------------------------ FT
def _factor_ref(f):
    """Per sample: channel mean of the square at each position, then divided by its L2 norm."""
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                out[i, y * w + x] = sum(float(f[i, k, y, x]) ** 2 for k in range(c)) / c
        out[i] /= np.sqrt((out[i] ** 2).sum())
    return out


def test_ft_loss_is_l1_between_normalised_channel_mean_squares():
    f_s, f_t = _rand(2, 3, 2, 2, seed=4), _rand(2, 5, 2, 2, seed=5)
    want = np.abs(_factor_ref(f_s) - _factor_ref(f_t)).mean()
    assert ft_loss(f_s, f_t).item() == pytest.approx(want, rel=1e-5)
    # the larger map is average-pooled to the smaller first (explicit 2x2 blocks)
    big = _rand(2, 3, 4, 4, seed=6)
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))
    want = np.abs(_factor_ref(pooled) - _factor_ref(f_t)).mean()
    assert ft_loss(big, f_t).item() == pytest.approx(want, rel=1e-5)
    assert ft_loss(f_t, big).item() == pytest.approx(want, rel=1e-5)


def test_ft_modules_shapes_and_reconstruction_loss():
    para = Paraphraser((2, 8, 4, 4), k=0.5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in para.modules())
    assert all(m.negative_slope == 0.1 for m in para.modules() if isinstance(m, nn.LeakyReLU))
    f_t = _rand(2, 8, 4, 4, seed=7).relu()
    assert para.encoder(f_t).shape == (2, 4, 4, 4) and para(f_t).shape == f_t.shape
    rec = para(f_t).detach()
    assert paraphraser_loss(para, f_t).item() == pytest.approx(((rec - f_t) ** 2).mean().item(), rel=1e-5)
    trans = Translator((2, 3, 4, 4), (2, 8, 4, 4), k=0.5)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trans.modules()) == 3
    assert trans(_rand(2, 3, 4, 4)).shape == (2, 4, 4, 4)


def test_ft_distiller_wiring_and_init_lr_rule():
    info = tiny_info()
    d = build("ft", info=info)
    d.freeze().train()
    assert all(not p.requires_grad for p in d.paraphraser.parameters())
    assert {"paraphraser", "translator"} <= set(d.extra_modules())
    x, y = tiny_batch(info, batch=8)
    losses = d((x, y))
    f_s, f_t = d.s_hooks.features["stage3"], d.t_hooks.features["stage3"]
    with torch.no_grad():
        want = ft_loss(d.translator(f_s), d.paraphraser.encoder(f_t)).item()
    assert losses["ft"].item() == pytest.approx(want, rel=1e-5)
    init = d.init_stage(2)
    assert init.lr == 0.01  # resnet8 student: RD's pretrain.py lr
    assert {id(p) for p in init.objective.trainable_parameters()} == {id(p) for p in d.paraphraser.parameters()}
    assert set(init.objective(x)) == {"ft_rec"}
    t, s = get_model("lenet5_bn", num_classes=10, in_chans=3), get_model("lenet5_half_bn", num_classes=10, in_chans=3)
    assert build("ft", t, s, info).init_stage(1).lr is None  # not a ResNet/WRN: the main lr


# ----------------------------------------------------------------------------------------- FSP
def _gram_ref(bot, top):
    b, cb, h, w = bot.shape
    ct = top.shape[1]
    g = np.zeros((b, cb, ct))
    for i in range(b):
        for p in range(cb):
            for q in range(ct):
                g[i, p, q] = sum(float(bot[i, p, y, x]) * float(top[i, q, y, x]) for y in range(h) for x in range(w))
    return g / (h * w)


def test_fsp_matrices_and_loss_match_explicit_loops():
    bot, top = _rand(2, 3, 2, 2, seed=8), _rand(2, 4, 2, 2, seed=9)
    assert np.allclose(fsp_matrix(bot, top).numpy(), _gram_ref(bot, top), atol=1e-6)
    big = _rand(2, 3, 4, 4, seed=10)
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))
    assert np.allclose(fsp_matrix(big, top).numpy(), _gram_ref(pooled, top), atol=1e-6)  # bottom larger
    assert np.allclose(fsp_matrix(top, big).numpy(), _gram_ref(top, pooled), atol=1e-6)  # top larger
    s = [_rand(2, 3, 4, 4, seed=11), _rand(2, 4, 2, 2, seed=12), _rand(2, 5, 2, 2, seed=13)]
    t = [_rand(2, 3, 4, 4, seed=14), _rand(2, 4, 2, 2, seed=15), _rand(2, 5, 2, 2, seed=16)]
    want = 0.0
    for i in range(2):
        gs = _gram_ref(s[i] if s[i].shape[2] == 2 else s[i].reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)), s[i + 1])
        gt = _gram_ref(t[i] if t[i].shape[2] == 2 else t[i].reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)), t[i + 1])
        want += ((gs - gt) ** 2).mean()
    assert fsp_loss(s, t).item() == pytest.approx(want, rel=1e-5)


def test_fsp_raises_a_clear_error_on_a_channel_mismatch():
    info = tiny_info()
    torch.manual_seed(0)
    t = get_model("wrn40_2", num_classes=10, in_chans=3)
    s = get_model("wrn40_1", num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match=r"fsp: .*channels.*wrn40_2 -> wrn40_1"):
        build("fsp", t, s, info)


def test_fsp_init_stage_uses_stem_and_stages_and_skips_the_classifier():
    info = tiny_info()
    d = build("fsp", info=info)
    init = d.init_stage(1)
    stage_params = {id(p) for p in init.objective.trainable_parameters()}
    assert stage_params == {id(p) for n, p in d.student.named_parameters() if not n.startswith("fc.")}
    x, y = tiny_batch(info, batch=8)
    got = init.objective((x, y))["fsp"]
    names = ("stem", "stage1", "stage2", "stage3")
    want = fsp_loss([d.s_hooks.features[n].detach() for n in names], [d.t_hooks.features[n] for n in names])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_student_feature_modules_follow_the_pool_tap_for_lenet():
    s = get_model("lenet5_half_bn", num_classes=10)
    kept = {id(p) for p in student_feature_modules(s).parameters()}
    head = {id(p) for p in s.fc[3].parameters()}
    assert kept.isdisjoint(head) and kept | head == {id(p) for p in s.parameters()}


# ---------------------------------------------------------------------------------------- hint
def test_hint_loss_is_the_elementwise_mean_square_error():
    g_s, f_t = _rand(2, 3, 2, 2, seed=17), _rand(2, 3, 2, 2, seed=18)
    want = sum((float(a) - float(b)) ** 2 for a, b in zip(g_s.ravel(), f_t.ravel())) / g_s.numel()
    assert hint_loss(g_s, f_t).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("s_shape,t_shape,kind", [
    ((2, 8, 16, 16), (2, 32, 8, 8), nn.Conv2d),           # student twice as large: stride-2 conv
    ((2, 8, 4, 4), (2, 32, 8, 8), nn.ConvTranspose2d),    # half as large: stride-2 transposed conv
    ((2, 8, 7, 7), (2, 32, 4, 4), nn.Conv2d),             # otherwise a valid conv of kernel 1 + s - t
])
def test_convreg_maps_the_student_map_to_the_teacher_shape(s_shape, t_shape, kind):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is kind
    out = reg(_rand(*s_shape))
    assert out.shape == t_shape and (out >= 0).all()  # BN + ReLU
    if s_shape[2] == 7:
        assert reg.conv.kernel_size == (4, 4)


def test_convreg_refuses_a_smaller_student_map():
    with pytest.raises(ValueError):
        ConvReg((2, 8, 3, 3), (2, 8, 8, 8))


def test_hint_distiller_reads_feat_at_hint_layer_and_two_stage_form_moves_it_to_the_init_stage():
    info = tiny_info()
    x, y = tiny_batch(info, batch=8)
    d = build("hint", info=info)  # RD single stage, feat[2] = stage2
    assert d.init_stage(5) is None and "RD single stage" in d.describe()
    losses = d((x, y))
    with torch.no_grad():
        want = ((d.regressor(d.s_hooks.features["stage2"]) - d.t_hooks.features["stage2"]) ** 2).mean()
    assert set(losses) == {"ce", "hint"} and losses["hint"].item() == pytest.approx(want.item(), rel=1e-5)
    pooled = build("hint", info=info, hint_layer=4)  # the pooled vector, as a 1x1 map
    assert torch.isfinite(pooled((x, y))["hint"])
    with pytest.raises(ValueError, match="hint_layer"):
        build("hint", info=info, hint_layer=5)
    two = build("hint", info=info, hint_stages=2)
    assert "paper two stages" in two.describe()
    init = two.init_stage(1)
    assert init.name == "hint_init" and set(init.objective((x, y))) == {"hint"}
    two.freeze().train()
    two.t_hooks.clear()
    assert set(two((x, y))) == {"ce"} and two.t_hooks.features == {}  # no hint, no teacher at -a 0
    assert two.regressor in list(two.frozen_modules())


# ---------------------------------------------------------------------- entry-script runs (digits)
TWO_STAGE_RUNS = {
    # method: (teacher arch, extra flags, init loss name, frozen module kept in the main checkpoint)
    "hint": ("lenet5_bn", ["--hint_stages", "2"], "hint", "regressor"),
    "ab": ("lenet5_bn", [], "ab", "connector"),
    "ft": ("lenet5_bn", ["--t_taps", "stage1=features.6", "--s_taps", "stage1=features.6"], "ft_rec", "paraphraser"),
    "fsp": ("lenet5_half", [], "fsp", None),
}


def _history(folder):
    return json.loads((folder / "metrics.json").read_text())["history"]


@pytest.mark.parametrize("method", sorted(TWO_STAGE_RUNS))
def test_two_stage_run_logs_the_init_stage_and_resume_does_not_retrain_it(tmp_path, method):
    teacher, extra, init_loss, frozen = TWO_STAGE_RUNS[method]
    ckpt = digits_teacher_ckpt(tmp_path / "models", arch=teacher)
    out = tmp_path / "run"
    argv = kd_cli(out, "--teacher", teacher, "--t_model_path", ckpt, "--distill", method, "--init_epochs", "1",
                  *extra)
    kdtrain.run(argv)
    init_last, main_last = out / "init" / "last.pt", out / "last.pt"
    assert init_last.is_file() and main_last.is_file()
    init_hist = _history(out / "init")
    assert len(init_hist) == 1 and f"loss_{init_loss}" in init_hist[0]
    assert np.isfinite(init_hist[0][f"loss_{init_loss}"])
    assert f"loss_{init_loss}" not in _history(out)[0]  # the init loss is not part of the main stage
    stamp = os.stat(init_last).st_mtime_ns
    init_ckpt = torch.load(init_last, weights_only=True)

    summary = kdtrain.run(argv + ["--resume", "--epochs", "2"])
    assert os.stat(init_last).st_mtime_ns == stamp and len(_history(out / "init")) == 1  # not retrained
    assert [h["epoch"] for h in _history(out)] == [1, 2] and summary["rows"][0]["epochs"] == 2
    if frozen is not None:  # trained in the init stage, frozen in the main stage, saved with it
        main_ckpt = torch.load(main_last, weights_only=True)
        for k, v in init_ckpt["modules"][frozen].items():
            assert torch.equal(v, main_ckpt["modules"][frozen][k]), f"{frozen}.{k} changed in the main stage"

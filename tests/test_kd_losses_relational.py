"""NST, SP, RKD, PKT, KDSVD, VID and CC: each loss against an independent computation (explicit
loops in numpy / Python floats over samples, channels, pairs and triplets) on small fixed
tensors, plus the distillers' defaults, taps and trainable extra modules."""
import math

import numpy as np
import pytest
import torch

from kdtools import build, tiny_batch, tiny_info, tiny_pair
from kd.distillers import Weights, get_distiller_class
from kd.distillers.cc import cc_loss
from kd.distillers.nst import nst_loss
from kd.distillers.pkt import pkt_loss
from kd.distillers.rkd import rkd_angle_loss, rkd_distance_loss
from kd.distillers.sp import sp_loss
from kd.distillers.svd import align_singular_vectors, svd_loss, top_singular
from kd.distillers.vid import VIDRegressor, vid_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _block_mean(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average-pool a (B, C, H, W) array to (B, C, h, w) by explicit block means."""
    b, c, hh, ww = a.shape
    fh, fw = hh // h, ww // w
    out = np.zeros((b, c, h, w))
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = a[:, :, i * fh:(i + 1) * fh, j * fw:(j + 1) * fw].mean(axis=(2, 3))
    return out


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ---------------------------------------------------------------------------------------- NST
def _nst_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    f_s = _block_mean(f_s, *f_t.shape[2:])  # the student map is the larger one here
    b = f_s.shape[0]

    def channel_vectors(f):
        vecs = f.reshape(f.shape[0], f.shape[1], -1)
        return [[v / math.sqrt(sum(x * x for x in v)) for v in sample] for sample in vecs]

    vs, vt = channel_vectors(f_s), channel_vectors(f_t)

    def kernel_mean(a, c):
        total, count = 0.0, 0
        for n in range(b):
            for x in a[n]:
                for y in c[n]:
                    total += float(np.dot(x, y)) ** 2
                    count += 1
        return total / count

    return kernel_mean(vt, vt) + kernel_mean(vs, vs) - 2 * kernel_mean(vs, vt)


def test_nst_is_the_polynomial_kernel_mmd_with_pooling_and_channel_normalisation():
    f_s, f_t = _randn(2, 3, 4, 4, seed=1).relu(), _randn(2, 5, 2, 2, seed=2).relu() + 0.1
    got = nst_loss(f_s, f_t).item()
    assert got == pytest.approx(_nst_reference(f_s.numpy(), f_t.numpy()), rel=1e-10)
    assert got > 1e-3
    assert nst_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------- SP
def _sp_reference(f_s: np.ndarray, f_t: np.ndarray) -> float:
    b = f_s.shape[0]

    def gram_rows_normalised(f):
        flat = f.reshape(b, -1)
        g = [[float(sum(flat[i, k] * flat[j, k] for k in range(flat.shape[1]))) for j in range(b)] for i in range(b)]
        return [[g[i][j] / math.sqrt(sum(v * v for v in g[i])) for j in range(b)] for i in range(b)]

    gs, gt = gram_rows_normalised(f_s), gram_rows_normalised(f_t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def test_sp_normalises_the_rows_of_the_gram_matrix_and_divides_by_b_squared():
    f_s, f_t = _randn(3, 2, 2, 2, seed=3), _randn(3, 4, 2, 2, seed=4)
    got = sp_loss(f_s, f_t).item()
    assert got == pytest.approx(_sp_reference(f_s.numpy(), f_t.numpy()), rel=1e-10)
    # normalising the features before the product (the order RD #45 asks about) is different
    q_s, q_t = [torch.nn.functional.normalize(f.flatten(1), dim=1) for f in (f_s, f_t)]
    other_order = ((q_t @ q_t.t()) - (q_s @ q_s.t())).pow(2).sum().item() / 9
    assert abs(got - other_order) > 1e-3


# ---------------------------------------------------------------------------------------- RKD
def _rkd_reference(e_s: np.ndarray, e_t: np.ndarray):
    b = e_s.shape[0]

    def distances(e):
        d = [[float(np.linalg.norm(e[i] - e[j])) if i != j else 0.0 for j in range(b)] for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mean for v in row] for row in d]

    def cosines(e):
        out = {}
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else float(np.dot(u, v) / (nu * nv))
        return out

    ds, dt = distances(e_s), distances(e_t)
    dist = sum(_smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b ** 2
    cs, ct = cosines(e_s), cosines(e_t)
    diffs = [cs[key] - ct[key] for key in cs]
    angle = sum(map(_smooth_l1, diffs)) / b ** 3
    return dist, angle, max(abs(x) for x in diffs)


def test_rkd_distance_and_angle_terms_match_loops_over_pairs_and_triplets():
    e_s, e_t = _randn(5, 3, seed=5), _randn(5, 4, seed=6) * 3.0
    dist, angle, largest = _rkd_reference(e_s.numpy(), e_t.numpy())
    assert largest > 1.0  # both branches of smooth-L1 are exercised
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(dist, rel=1e-8)
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(angle, rel=1e-8)
    # the distance term is scale-free (mean normalisation); the angle term too
    assert rkd_distance_loss(7.0 * e_s, e_t).item() == pytest.approx(dist, rel=1e-8)


def test_rkd_distiller_returns_both_terms_times_their_internal_weights():
    info = tiny_info()
    x, y = tiny_batch(info, batch=8)
    d = build("rkd", info=info, weights=Weights(r=0.0))
    losses = d((x, y))
    assert set(losses) == {"rkd_dist", "rkd_angle"}
    f_s, f_t = d.s_hooks.features["pool"], d.t_hooks.features["pool"]
    assert losses["rkd_dist"].item() == pytest.approx(25 * rkd_distance_loss(f_s, f_t).item(), rel=1e-5)
    assert losses["rkd_angle"].item() == pytest.approx(50 * rkd_angle_loss(f_s, f_t).item(), rel=1e-5)
    assert d.loss_weight("rkd_dist") == d.loss_weight("rkd_angle") == 1.0
    only_angle = build("rkd", info=info, weights=Weights(r=0.0), rkd_dist=0.0, rkd_angle=2.0)
    out = only_angle((x, y))
    assert set(out) == {"rkd_angle"}
    assert out["rkd_angle"].item() == pytest.approx(losses["rkd_angle"].item() / 25, rel=1e-5)


# ---------------------------------------------------------------------------------------- PKT
def _pkt_reference(f_s: np.ndarray, f_t: np.ndarray, eps: float = 1e-7) -> float:
    b = f_s.shape[0]

    def probabilities(f):
        unit = [row / (math.sqrt(sum(v * v for v in row)) + eps) for row in f]
        sim = [[(float(np.dot(unit[i], unit[j])) + 1.0) / 2.0 for j in range(b)] for i in range(b)]
        return [[sim[i][j] / sum(sim[i]) for j in range(b)] for i in range(b)]

    ps, pt = probabilities(f_s), probabilities(f_t)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b ** 2


def test_pkt_is_the_mean_kl_of_cosine_probabilities_with_eps():
    f_s, f_t = _randn(4, 6, seed=7), _randn(4, 5, seed=8)
    f_s[2] = f_s[2] / f_s[2].norm() * 1e-7  # a row whose norm is eps: its cosines are halved by the eps
    got = pkt_loss(f_s, f_t).item()
    assert got == pytest.approx(_pkt_reference(f_s.numpy(), f_t.numpy()), rel=1e-9)
    assert got != pytest.approx(_pkt_reference(f_s.numpy(), f_t.numpy(), eps=1e-15), rel=1e-3)
    assert pkt_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------- SVD
def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


def _feature_with_svd(right: np.ndarray, sing: np.ndarray, seed: int, h: int = 2, w: int = 3) -> np.ndarray:
    """A C x H x W map whose (HW x C) view is U diag(sing) right^T (right: C x C orthogonal)."""
    c = right.shape[0]
    left, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((h * w, c)))
    x = left @ np.diag(sing) @ right.T  # HW x C
    return x.T.reshape(c, h, w)


def test_svd_right_singular_vectors_sign_alignment_by_hand():
    e = torch.eye(4, dtype=torch.float64)
    v_s = torch.stack([e[0], -e[1], e[2], e[3]], dim=1)[None]  # B x C x 4
    v_t = torch.tensor([0.3, 0.9, 0.1, 0.3], dtype=torch.float64)[None, :, None]
    aligned = align_singular_vectors(v_s, v_t)
    assert torch.equal(aligned[0, :, 0], e[1])  # the 2nd column (|cos| 0.9), its sign flipped back


@pytest.mark.parametrize("k", [1, 2])
def test_svd_loss_matches_a_loop_over_constructed_singular_vectors(k):
    c, b = 4, 2
    sing_t, sing_s = np.array([4.0, 3.0, 2.0, 1.0]), np.array([5.0, 3.5, 2.0, 0.5])
    rights_t = [[_orthogonal(c, 10 * n + l) for l in range(2)] for n in range(b)]
    rights_s = [[_orthogonal(c, 100 + 10 * n + l) for l in range(2)] for n in range(b)]
    g_t = [torch.tensor(np.stack([_feature_with_svd(rights_t[n][l], sing_t, 7 + n + l) for n in range(b)]))
           for l in range(2)]
    g_s = [torch.tensor(np.stack([_feature_with_svd(rights_s[n][l], sing_s, 9 + n + l) for n in range(b)]))
           for l in range(2)]
    got = svd_loss(g_s, g_t, k).item()

    scale = sing_t[:k] / np.linalg.norm(sing_t[:k])
    total = 0.0
    for n in range(b):
        vs, vt = [], []
        for l in range(2):
            # the teacher's vectors are the constructed ones up to the sign the SVD routine picks
            _, v_impl = top_singular(g_t[l][n:n + 1], k)
            teacher = np.zeros((c, k))
            for m in range(k):
                col = rights_t[n][l][:, m]
                sign = float(np.sign(np.dot(v_impl[0, :, m].numpy(), col)))
                assert np.allclose(v_impl[0, :, m].numpy(), sign * col, atol=1e-10)
                teacher[:, m] = sign * col
            student = np.zeros((c, k))
            for m in range(k):
                cosines = [float(np.dot(rights_s[n][l][:, j], teacher[:, m])) for j in range(c)]
                best = max(range(c), key=lambda j: abs(cosines[j]))
                student[:, m] = math.copysign(1.0, cosines[best]) * rights_s[n][l][:, best]
            vs.append(student * scale)
            vt.append(teacher * scale)
        for ci in range(c):
            for d in range(c):
                for m in range(k):
                    ks = math.exp(-(vs[1][ci, m] - vs[0][d, m]) ** 2 / 8)
                    kt = math.exp(-(vt[1][ci, m] - vt[0][d, m]) ** 2 / 8)
                    total += (ks - kt) ** 2
    assert got == pytest.approx(total / b, rel=1e-8)
    assert got > 1e-4


def test_svd_loss_is_zero_when_the_student_holds_the_teacher_direction_with_another_rank_and_sign():
    c, b = 4, 2
    sing = np.array([4.0, 3.0, 2.0, 1.0])
    g_t, g_s = [], []
    for l in range(3):
        rt, rs = [], []
        for n in range(b):
            right_t = _orthogonal(c, 20 + 10 * l + n)
            # the student: the teacher's leading direction is its 2nd singular vector, sign flipped
            right_s = np.stack([right_t[:, 1], -right_t[:, 0], right_t[:, 2], right_t[:, 3]], axis=1)
            rt.append(_feature_with_svd(right_t, sing, 50 + l + n))
            rs.append(_feature_with_svd(right_s, sing, 60 + l + n))
        g_t.append(torch.tensor(np.stack(rt)))
        g_s.append(torch.tensor(np.stack(rs)))
    # zero only if the 2nd student vector is picked and its sign restored (the 1st is orthogonal)
    assert svd_loss(g_s, g_t).item() == pytest.approx(0.0, abs=1e-12)
    assert svd_loss(g_t, g_t).item() == 0.0
    shuffled = [g_s[0], g_t[1], g_s[2]]  # stage 2 now has the teacher's own map: still aligned -> 0
    assert svd_loss(shuffled, g_t).item() == pytest.approx(0.0, abs=1e-12)
    other = [g_s[0], torch.tensor(np.stack([_feature_with_svd(_orthogonal(c, 99 + n), sing, 70 + n)
                                            for n in range(b)])), g_s[2]]
    assert svd_loss(other, g_t).item() > 1e-4


def test_svd_distiller_needs_equal_stage_widths():
    t, s = tiny_pair(teacher="wrn16_2", student="resnet8")
    with pytest.raises(ValueError, match="equal channel counts"):
        build("svd", teacher=t, student=s)


# ---------------------------------------------------------------------------------------- VID
def test_vid_variance_starts_at_five_and_the_loss_is_the_gaussian_nll():
    torch.manual_seed(0)
    reg = VIDRegressor(3, 2).double()
    assert torch.allclose(reg.variance(), torch.full((2,), 5.0, dtype=torch.float64), rtol=0, atol=1e-6)
    with torch.no_grad():
        reg.log_scale.copy_(torch.tensor([-1.0, 2.5]))
    f_s, f_t = _randn(2, 3, 4, 4, seed=11), _randn(2, 2, 2, 2, seed=12)
    got = vid_loss(reg, f_s, f_t).item()

    pooled = _block_mean(f_s.numpy(), 2, 2)
    w1, w2, w3 = (m.weight.detach().numpy()[:, :, 0, 0] for m in (reg.mean[0], reg.mean[2], reg.mean[4]))
    log_scale = reg.log_scale.detach().numpy()
    var = [math.log(1.0 + math.exp(v)) + 1e-5 for v in log_scale]
    terms = []
    for n in range(2):
        for i in range(2):
            for j in range(2):
                h = np.maximum(w1 @ pooled[n, :, i, j], 0)
                h = np.maximum(w2 @ h, 0)
                mu = w3 @ h
                for ch in range(2):
                    terms.append(0.5 * ((mu[ch] - f_t[n, ch, i, j].item()) ** 2 / var[ch] + math.log(var[ch])))
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_vid_regressors_and_scales_are_trainable_extra_modules():
    d = build("vid")
    regs = d.extra_modules()["vid"]
    assert len(regs) == 3
    for reg, s_shape, t_shape in zip(regs, d.s_shape("stages"), d.t_shape("stages")):
        assert reg.mean[0].in_channels == s_shape[1] and reg.mean[0].out_channels == t_shape[1]
        assert reg.mean[2].in_channels == reg.mean[2].out_channels == t_shape[1]  # middle width = teacher
        assert reg.mean[4].out_channels == t_shape[1] and reg.log_scale.shape == (t_shape[1],)
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(reg.log_scale) in trainable for reg in regs)
    d.freeze().train()
    info = tiny_info()
    sum(d(tiny_batch(info, batch=4)).values()).backward()
    assert all(reg.log_scale.grad is not None and reg.log_scale.grad.abs().sum() > 0 for reg in regs)


# ----------------------------------------------------------------------------------------- CC
def test_cc_is_the_mean_over_consecutive_pairs():
    e_s, e_t = _randn(5, 3, seed=13), _randn(5, 3, seed=14)
    delta = (e_s - e_t).abs().numpy()
    expected = sum(sum(delta[i, dd] * delta[i + 1, dd] for dd in range(3)) for i in range(4)) / 4
    assert cc_loss(e_s, e_t).item() == pytest.approx(expected, rel=1e-12)


def test_cc_embeds_both_nets_and_trains_the_teacher_embedding():
    d = build("cc", weights=Weights(r=0.0))
    mods = d.extra_modules()
    assert set(mods) == {"cc_embed_s", "cc_embed_t"}
    assert mods["cc_embed_s"].linear.in_features == d.s_shape("pool")[0][1]
    assert mods["cc_embed_t"].linear.in_features == d.t_shape("pool")[0][1]
    assert mods["cc_embed_s"].linear.out_features == mods["cc_embed_t"].linear.out_features == 128
    assert build("cc", feat_dim=16).extra_modules()["cc_embed_t"].linear.out_features == 16
    d.freeze().train()
    info = tiny_info()
    losses = d(tiny_batch(info, batch=4))
    f_s, f_t = d.s_hooks.features["pool"], d.t_hooks.features["pool"]
    assert not f_t.requires_grad
    assert losses["cc"].item() == pytest.approx(cc_loss(mods["cc_embed_s"](f_s), mods["cc_embed_t"](f_t)).item(),
                                                rel=1e-6)
    losses["cc"].backward()
    assert mods["cc_embed_t"].linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())


# ------------------------------------------------------------------------ defaults and taps
@pytest.mark.parametrize("name, alias, b", [
    ("nst", None, 50.0), ("sp", "similarity", 3000.0), ("rkd", None, 1.0), ("pkt", None, 30000.0),
    ("svd", "kdsvd", 1.0), ("vid", None, 1.0), ("cc", "correlation", 0.02)])
def test_default_weights_are_the_repdistiller_script_values(name, alias, b):
    cls = get_distiller_class(name)
    assert (cls.weights.r, cls.weights.a, cls.weights.b) == (1.0, 0.0, b)
    if alias:
        assert get_distiller_class(alias) is cls


def test_option_defaults():
    assert (get_distiller_class("rkd").Options().rkd_dist, get_distiller_class("rkd").Options().rkd_angle) == (25, 50)
    assert get_distiller_class("cc").Options().feat_dim == 128
    assert get_distiller_class("svd").Options().svd_k == 1
    assert get_distiller_class("vid").Options().vid_init_var == 5.0


@pytest.mark.parametrize("name, taps", [
    ("nst", {"stage1", "stage2", "stage3"}), ("sp", {"stage3"}), ("rkd", {"pool"}), ("pkt", {"pool"}),
    ("svd", {"stage1", "stage2", "stage3"}), ("vid", {"stage1", "stage2", "stage3"}), ("cc", {"pool"})])
def test_taps_follow_the_repdistiller_feature_lists(name, taps):
    d = build(name)
    assert set(d.s_hooks.specs) == set(d.t_hooks.specs) == taps


@pytest.mark.parametrize("name, fn", [("nst", nst_loss), ("sp", sp_loss), ("pkt", pkt_loss)])
def test_distiller_wires_its_taps_to_the_loss(name, fn):
    info = tiny_info()
    d = build(name, info=info, weights=Weights(r=0.0))
    losses = d(tiny_batch(info, batch=6))
    group = {"nst": "stages", "sp": "last_stage", "pkt": "pool"}[name]
    s = [d.s_hooks.features[n] for n in d.s_groups[group]]
    t = [d.t_hooks.features[n] for n in d.t_groups[group]]
    assert list(losses) == [name]
    assert losses[name].item() == pytest.approx(sum(fn(a, c) for a, c in zip(s, t)).item(), rel=1e-5)


def test_svd_gradient_stays_finite_where_singular_values_repeat():
    """Dead channels give repeated zero singular values, where torch's SVD backward is Inf/NaN."""
    def maps():
        g = torch.Generator().manual_seed(0)
        f1, f2 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 2, 2, generator=g)
        f1[:, 2:] = 0  # two dead channels
        t1, t2 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 2, 2, generator=g)
        return f1.requires_grad_(True), f2.requires_grad_(True), t1, t2

    f1, f2, t1, t2 = maps()
    svd_loss([f1, f2], [t1, t2], 1).backward()
    assert torch.isfinite(f1.grad).all() and torch.isfinite(f2.grad).all() and f1.grad.abs().sum() > 0
    a = f1.detach().flatten(2).transpose(1, 2).requires_grad_(True)  # the full SVD backward on the same map
    torch.linalg.svd(a, full_matrices=False)[2][:, :4].sum().backward()
    assert not torch.isfinite(a.grad).all()  # the case really is degenerate for torch's own backward


def test_svd_vector_gradient_equals_torchs_where_that_is_finite():
    from kd.distillers.svd import _LeadingRightSingularVectors

    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)

    def sign_free(v):  # invariant to each vector's sign, as the loss is after alignment
        return ((v * w).sum(1) ** 2).sum()

    ours, = torch.autograd.grad(sign_free(_LeadingRightSingularVectors.apply(a, 2)), a)
    ref, = torch.autograd.grad(sign_free(torch.linalg.svd(a, full_matrices=False)[2].transpose(1, 2)[:, :, :2]), a)
    assert torch.allclose(ours, ref, atol=1e-10)

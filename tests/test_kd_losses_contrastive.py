"""CRD and DKD against independent computations (explicit loops on small fixed tensors)."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from kdtools import build, weighted_total
from kd.distillers import DataInfo, Weights, get_distiller_class
from kd.distillers.crd import ContrastMemory, contrast_scores, fix_normaliser, nce_loss, update_memory
from kd.distillers.dkd import dkd_parts, dkd_warmup_factor
from kd.losses import kd_kl_div

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class TinyNet(nn.Module):
    """A fast stand-in for the CIFAR pair: 1x4x4 images, one hidden layer, a ``pool`` tap."""

    def __init__(self, hidden: int, num_classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)
        self.feature_taps = {"pool": "fc:in"}

    def forward(self, x):
        return self.fc(self.body(x))


def tiny_setup(n=40, classes=5, batch=6, seed=0):
    """Teacher, student, data info (n samples) and one indexed batch, all tiny."""
    torch.manual_seed(seed)
    teacher, student = TinyNet(12, classes).eval(), TinyNet(7, classes)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    info = DataInfo(num_classes=classes, in_chans=1, image_size=4, num_samples=n, labels=labels)
    index = torch.randperm(n, generator=g)[:batch]
    x = torch.randn(batch, 1, 4, 4, generator=g)
    return teacher, student, info, (x, labels[index], index)


# ----------------------------------------------------------------------------------------- CRD
def _nce_by_loops(scores, n_data, eps=1e-7):
    rows = scores.tolist()
    k = len(rows[0]) - 1
    noise = k / n_data
    total = 0.0
    for row in rows:
        total += math.log(row[0] / (row[0] + noise + eps))
        total += sum(math.log(noise / (p + noise + eps)) for p in row[1:])
    return -total / len(rows)


def test_nce_loss_is_eq18_with_noise_k_over_n():
    scores = torch.tensor([[0.9, 0.01, 0.2, 0.05], [0.3, 0.6, 0.02, 0.1]], dtype=torch.float64)
    for n_data in (10, 1000):
        assert nce_loss(scores, n_data).item() == pytest.approx(_nce_by_loops(scores, n_data), rel=1e-10)
    # a better positive / weaker negatives lower the loss
    better = scores.clone()
    better[:, 0] *= 2
    better[:, 1:] /= 2
    assert nce_loss(better, 10) < nce_loss(scores, 10)


def test_contrast_scores_are_exp_of_memory_dot_anchor_over_t():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(6, 3, generator=g, dtype=torch.float64)
    anchor = torch.randn(2, 3, generator=g, dtype=torch.float64)
    idx = torch.tensor([[4, 0, 5], [1, 1, 3]])
    got = contrast_scores(memory, anchor, idx, 0.07)
    for b in range(2):
        for j in range(3):
            dot = sum(memory[idx[b, j], d].item() * anchor[b, d].item() for d in range(3))
            assert got[b, j].item() == pytest.approx(math.exp(dot / 0.07), rel=1e-10)


def test_memory_update_mixes_with_momentum_then_renormalises_only_the_batch_rows():
    memory = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    before = memory.clone()
    emb = torch.tensor([[0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    update_memory(memory, emb, torch.tensor([2, 0]), momentum=0.5)
    for row, e in ((2, emb[0]), (0, emb[1])):
        mix = [0.5 * before[row, d].item() + 0.5 * e[d].item() for d in range(2)]
        norm = math.sqrt(sum(v * v for v in mix))
        assert memory[row].tolist() == pytest.approx([v / norm for v in mix], rel=1e-10)
    assert torch.equal(memory[1], before[1])  # not in the batch: untouched


def test_normaliser_is_fixed_by_the_first_batch_and_kept():
    z = torch.full((), -1.0)
    first = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = fix_normaliser(z, first, n_data=100)
    assert got.item() == pytest.approx(3.5 * 100) and z.item() == pytest.approx(350.0)
    again = fix_normaliser(z, first * 10, n_data=100)
    assert again.item() == pytest.approx(350.0) and z.item() == pytest.approx(350.0)
    assert isinstance(got, torch.Tensor) and got.device == z.device


def test_memory_initialisation_and_what_the_checkpoint_holds():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mem = ContrastMemory(12, labels)
    stdv = 1 / math.sqrt(12 / 3)
    for buf in (mem.memory_s, mem.memory_t):
        assert buf.shape == (8, 12) and buf.abs().max() <= stdv and buf.abs().max() > 0.5 * stdv
    assert mem.z_s.item() == -1 and mem.z_t.item() == -1
    assert set(mem.state_dict()) == {"memory_s", "memory_t", "z_s", "z_t"}  # class tables are rebuilt, not saved
    assert {n for n, _ in mem.named_buffers()} >= {"labels", "by_class", "class_start", "class_count"}
    with pytest.raises(ValueError, match="fewer than two classes"):
        ContrastMemory(4, torch.zeros(5, dtype=torch.long))


def _labels(n=60, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("device", DEVICES)
def test_exact_mode_positive_is_the_sample_and_negatives_are_other_classes(device):
    labels = _labels()
    mem = ContrastMemory(4, labels).to(device)
    index = torch.tensor([0, 7, 13, 59, 22], device=device)
    torch.manual_seed(0)
    idx = mem.contrast_indices(index, 3000, "exact")
    assert idx.shape == (5, 3001) and idx.device.type == device and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], index)
    lab = labels.to(device)
    assert (lab[idx[:, 1:]] != lab[index].unsqueeze(1)).all()  # never a same-class negative
    for b in range(5):  # every other-class sample is drawn, about uniformly (3000 draws over <= 60)
        others = (labels != labels[index[b].item()]).nonzero().flatten().tolist()
        counts = torch.bincount(idx[b, 1:].cpu(), minlength=60)
        assert all(counts[j] > 0 for j in others)
        expected = 3000 / len(others)
        assert counts[others].float().sub(expected).abs().max() < 0.6 * expected


@pytest.mark.parametrize("device", DEVICES)
def test_relax_mode_positive_is_a_random_same_class_sample(device):
    labels = _labels()
    mem = ContrastMemory(4, labels).to(device)
    index = torch.tensor([3, 3, 3, 3], device=device).repeat(200)  # one anchor, many draws
    torch.manual_seed(1)
    idx = mem.contrast_indices(index, 50, "relax")
    lab = labels.to(device)
    same = (labels == labels[3]).nonzero().flatten().tolist()
    assert (lab[idx[:, 0]] == lab[3]).all()
    assert set(idx[:, 0].tolist()) == set(same)  # every same-class sample, itself included, shows up
    assert (lab[idx[:, 1:]] != lab[3]).all()  # negatives: other classes, as in exact mode
    with pytest.raises(ValueError, match="crd_mode"):
        mem.contrast_indices(index, 5, "any")


def _crd_reference(d, batch, memory0, idx):
    """The CRD losses recomputed from the taps, the initial memory and the drawn indices."""
    n = d.memory.n_data
    f_s, f_t = d.s_hooks.features["pool"], d.t_hooks.features["pool"]
    v_s, v_t = d.embed_s(f_s).detach(), d.embed_t(f_t).detach()
    out = {}
    for name, v, mem in (("crd_s", v_s, memory0["memory_t"]), ("crd_t", v_t, memory0["memory_s"])):
        rows = []
        for b in range(idx.shape[0]):
            rows.append([math.exp(sum(mem[idx[b, j], c].item() * v[b, c].item() for c in range(v.shape[1]))
                                  / d.opts.nce_t) for j in range(idx.shape[1])])
        z = sum(map(sum, rows)) / (len(rows) * len(rows[0])) * n
        out[name] = _nce_by_loops(torch.tensor([[p / z for p in r] for r in rows], dtype=torch.float64), n)
    return out, v_s, v_t


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_crd_distiller_step_matches_the_formula_and_updates_its_memory(mode):
    teacher, student, info, (x, y, index) = tiny_setup()
    d = build("crd", teacher, student, info, feat_dim=8, nce_k=6, crd_mode=mode)
    d.freeze().train()
    memory0 = copy.deepcopy(d.memory.state_dict())
    drawn = []
    draw = d.memory.contrast_indices
    d.memory.contrast_indices = lambda *a: drawn.append(draw(*a)) or drawn[-1]
    losses = d((x, y, index))
    idx = drawn[0]
    assert idx.shape == (6, 7)
    if mode == "exact":
        assert torch.equal(idx[:, 0], index)
    assert (info.labels[idx[:, 0]] == info.labels[index]).all()
    want, v_s, v_t = _crd_reference(d, (x, y, index), memory0, idx)
    for name in ("crd_s", "crd_t"):
        assert losses[name].item() == pytest.approx(want[name], rel=1e-4)
    assert losses["crd_s"].requires_grad and "kd" not in losses  # -a 0 by default
    # memory: the batch rows (the anchors' own, also in relax mode) mixed 0.5/0.5 and renormalised
    for key, v in (("memory_s", v_s), ("memory_t", v_t)):
        new, old = getattr(d.memory, key), memory0[key]
        expect = torch.nn.functional.normalize(0.5 * old[index] + 0.5 * v, dim=1)
        assert torch.allclose(new[index], expect, atol=1e-6)
        rest = torch.ones(info.num_samples, dtype=torch.bool)
        rest[index] = False
        assert torch.equal(new[rest], old[rest])
    z = d.memory.z_s.clone()
    assert z.item() > 0
    d((x, y, index))
    assert torch.equal(d.memory.z_s, z)  # fixed after the first batch


def test_crd_descends_its_objective_at_a_fixed_memory():
    """The memory moves with every step, so the loss of one batch is not monotone (on a repeated
    batch it rises); with the memory, Z and the draws held at their state before the first step,
    the trained parameters give a lower loss than the initial ones."""
    teacher, student, info, batch = tiny_setup(batch=16)
    d = build("crd", teacher, student, info, nce_k=256)
    d.freeze().train()
    with torch.no_grad():
        d(batch)  # fixes Z and fills the batch rows once
    memory0, rng = copy.deepcopy(d.memory.state_dict()), torch.get_rng_state()
    assert memory0["z_s"] > 0 and memory0["z_t"] > 0
    opt = torch.optim.SGD(list(d.trainable_parameters()), lr=0.01, momentum=0.9)
    first = None
    for _ in range(3):
        total = weighted_total(d, d(batch))
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    d.memory.load_state_dict(memory0)
    torch.set_rng_state(rng)
    with torch.no_grad():
        assert weighted_total(d, d(batch)).item() < first


def test_crd_defaults_options_and_errors():
    cls = get_distiller_class("crd")
    teacher, student, info, (x, y, index) = tiny_setup()
    d = build("crd", teacher, student, info)
    assert cls.needs_index and (d.w.r, d.w.a, d.w.b) == (1.0, 0.0, 0.8)
    assert (d.opts.feat_dim, d.opts.nce_k, d.opts.nce_t, d.opts.nce_m, d.opts.crd_mode) == (128, 16384, 0.07, 0.5,
                                                                                             "exact")
    assert set(d.extra_modules()) == {"crd_embed_s", "crd_embed_t", "crd_memory"}
    assert d.embed_s.linear.in_features == 7 and d.embed_t.linear.in_features == 12  # the pooled features
    params = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in params for p in d.embed_t.parameters())  # the teacher's head trains too
    assert d.memory.memory_s.shape == (info.num_samples, 128)
    d.train()
    with pytest.raises(ValueError, match="index"):
        d((x, y))
    no_labels = DataInfo(num_classes=5, in_chans=1, image_size=4, num_samples=40, labels=None)
    with pytest.raises(ValueError, match="labels"):
        build("crd", teacher, student, no_labels)
    with pytest.raises(ValueError, match="crd_mode"):
        build("crd", teacher, student, info, crd_mode="loose")
    both = build("crd", teacher, student, info, weights=Weights(a=1.0), nce_k=64)  # CRD+KD: -a 1 -b 0.8
    assert set(both((x, y, index))) == {"ce", "kd", "crd_s", "crd_t"}


# ----------------------------------------------------------------------------------------- DKD
def _softmax(row, T):
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _dkd_by_loops(s, t, y, T):
    tckd = nckd = 0.0
    for zs, zt, c in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax(zs, T), _softmax(zt, T)
        bs, bt = [ps[c], 1 - ps[c]], [pt[c], 1 - pt[c]]
        tckd += sum(q * math.log(q / p) for q, p in zip(bt, bs))
        others = [j for j in range(len(zs)) if j != c]
        ns = [ps[j] / sum(ps[k] for k in others) for j in others]
        nt = [pt[j] / sum(pt[k] for k in others) for j in others]
        nckd += sum(q * math.log(q / p) for q, p in zip(nt, ns))
    b = len(y)
    return tckd / b * T * T, nckd / b * T * T


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_parts_equal_the_binary_and_renormalised_kls(T):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64) * 3
    t = torch.randn(3, 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 4, 2])
    tckd, nckd = dkd_parts(s, t, y, T)
    want_t, want_n = _dkd_by_loops(s, t, y, T)
    assert tckd.item() == pytest.approx(want_t, rel=1e-5)
    assert nckd.item() == pytest.approx(want_n, rel=1e-5)


def test_dkd_recombines_into_kd():
    """The paper's Eq. 5: KD = TCKD + (1 - p_t[y]) NCKD, per sample."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([1, 0, 5, 3])
    T = 2.0
    total = 0.0
    for b in range(4):
        tc, nc = dkd_parts(s[b:b + 1], t[b:b + 1], y[b:b + 1], T)
        p_t = torch.softmax(t[b] / T, 0)[y[b]].item()
        total += tc.item() + (1 - p_t) * nc.item()
    assert total / 4 == pytest.approx(kd_kl_div(s, t, T).item(), rel=1e-4)


def test_dkd_stays_finite_when_probabilities_underflow():
    s = torch.tensor([[300.0, 0.0, -300.0]], requires_grad=True)
    t = torch.tensor([[0.0, 200.0, -200.0]])
    tckd, nckd = dkd_parts(s, t, torch.tensor([0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()
    assert tckd.item() > 100  # the student's p_y ~ 1, the teacher's ~ 0: a large, finite KL


def test_dkd_warmup_counts_epochs_like_mdistiller():
    # MD: min(epoch / 20, 1) with epochs 1, 2, ...; ours count from 0
    assert [dkd_warmup_factor(e, 20) for e in (0, 10, 25)] == pytest.approx([1 / 20, 11 / 20, 1.0])
    assert dkd_warmup_factor(19, 20) == 1.0 and dkd_warmup_factor(18, 20) == pytest.approx(0.95)


def test_dkd_distiller_weights_each_part_by_alpha_beta_and_warmup():
    t, s, info, (x, y, _) = tiny_setup(batch=8)
    d = build("dkd", t, s, info, T=4.0, dkd_alpha=2.0, dkd_beta=8.0, dkd_warmup=20)
    assert (d.w.r, d.w.a, d.w.b) == (1.0, 0.0, 1.0) and get_distiller_class("dkd").reads_temperature
    d.eval()
    with torch.no_grad():
        tckd, nckd = dkd_parts(s(x), t(x), y, 4.0)
    for epoch, ramp in ((0, 0.05), (10, 0.55), (25, 1.0)):
        d.set_epoch(epoch)
        with torch.no_grad():
            losses = d((x, y))
        assert set(losses) == {"ce", "tckd", "nckd"}
        assert losses["tckd"].item() == pytest.approx(ramp * 2.0 * tckd.item(), rel=1e-5)
        assert losses["nckd"].item() == pytest.approx(ramp * 8.0 * nckd.item(), rel=1e-5)
    soft = torch.nn.functional.one_hot(y, 5).float() * 0.6 + 0.08  # mixed targets: the dominant class
    with torch.no_grad():
        assert d((x, soft))["nckd"].item() == pytest.approx(8.0 * nckd.item(), rel=1e-5)

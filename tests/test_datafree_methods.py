"""Synthesizers end to end on tiny BatchNorm nets, and the meta-gradients of fast_meta."""
import copy

import pytest
import torch
import torch.nn as nn

from datafree import SYNTHESIZERS, SynthesisConfig
from datafree.fast_meta import REPTILE_SCALE, FastMetaSynthesizer
from datafree.source import DataFreeSource

DEV = torch.device("cpu")


class TinyBNNet(nn.Module):
    def __init__(self, in_chans=1, num_classes=4, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def tiny_cfg(**kw):
    base = dict(num_classes=4, img_size=8, nc=1, mean=(0.5,), std=(0.25,), batch_size=6, g_steps=3, nz=8,
                ngf=4, bn=1.0, oh=1.0, adv=1.0, bn_mmt=0.9, warmup=0, lr_g=1e-2, lr_z=1e-2, pad=1)
    base.update(kw)
    return SynthesisConfig(**base)


def make(method="fast_meta", **kw):
    torch.manual_seed(0)
    teacher = TinyBNNet().eval()
    # give the teacher non-trivial running statistics
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(32, 1, 8, 8) * 0.5 + 0.2)
    teacher.eval().requires_grad_(False)
    student = TinyBNNet(width=4)
    return SYNTHESIZERS[method](teacher, student, tiny_cfg(**kw), DEV)


@pytest.mark.parametrize("method,kw", [("fast", {}), ("fast_meta", {"is_maml": 1}),
                                       ("fast_meta", {"is_maml": 0}), ("fast_meta", {"is_maml": 2})])
def test_round_end_to_end(method, kw):
    s = make(method, **kw)
    g0 = copy.deepcopy(s.generator.state_dict())
    stats = s.synthesize(epoch=0)
    assert len(s.pool) == 6
    for k in ("syn_time", "syn_loss", "syn_bn", "syn_oh", "syn_adv"):
        assert k in stats and stats[k] == stats[k]  # present and not NaN
    changed = any(not torch.equal(g0[k], v) for k, v in s.generator.state_dict().items())
    assert changed, "the generator (or its initialisation) must move after a round"
    x = s.sample(5)
    assert x.shape == (5, 1, 8, 8)
    # BN hooks are off outside synthesis, and the student's weights got no gradient
    assert all(not h.enabled for h in s.bn_loss.hooks)
    assert all(p.grad is None for p in s.student.parameters())
    assert all(p.requires_grad for p in s.student.parameters())


def _record_inner(s):
    """Wrap inner_loop to record each inner gradient of the fast generator and its final weights."""
    record = {"grads": [], "fast": None}
    orig = s.inner_loop

    def inner_loop(generator, z, targets, epoch, after_backward=None):
        def hook(k):
            record["grads"].append([p.grad.clone() for p in generator.parameters()])
            if after_backward is not None:
                after_backward(k)

        out = orig(generator, z, targets, epoch, after_backward=hook)
        record["fast"] = generator
        return out

    s.inner_loop = inner_loop
    meta = {}
    step = s.meta_optimizer.step

    def meta_step(*a, **k):
        meta["grads"] = [p.grad.clone() for p in s.generator.parameters()]
        meta["theta"] = [p.detach().clone() for p in s.generator.parameters()]
        return step(*a, **k)

    s.meta_optimizer.step = meta_step
    return record, meta


def test_fomaml_meta_gradient_is_the_sum_of_inner_gradients():
    s = make(is_maml=1, g_steps=4)
    record, meta = _record_inner(s)
    s.synthesize(epoch=0)
    assert len(record["grads"]) == 4
    for i, g in enumerate(meta["grads"]):
        want = sum(step[i] for step in record["grads"])
        assert torch.allclose(g, want, atol=1e-6)
        assert not torch.allclose(g, record["grads"][-1][i])  # not just the last inner gradient


def test_reptile_meta_gradient_is_the_scaled_weight_difference():
    s = make(is_maml=0, g_steps=3)
    record, meta = _record_inner(s)
    s.synthesize(epoch=0)
    for g, theta, fast in zip(meta["grads"], meta["theta"], record["fast"].parameters()):
        assert torch.allclose(g, REPTILE_SCALE * (theta - fast.detach()), atol=1e-6)


def test_second_order_meta_gradient_flows_through_the_inner_loop():
    s = make(is_maml=2, g_steps=2)
    meta = {}
    step = s.meta_optimizer.step
    s.meta_optimizer.step = lambda *a, **k: (meta.setdefault("g", [p.grad for p in s.generator.parameters()]),
                                            step(*a, **k))
    s.synthesize(epoch=0)
    assert any(g is not None and g.abs().sum() > 0 for g in meta["g"])


def test_adversarial_term_only_after_warmup():
    # the reference's gate ep >= warmup with ep the 1-based round count: at one round per epoch
    # the term already acts in the last synthesis-only epoch (index warmup - 1)
    s = make(warmup=2)
    assert "syn_adv" not in s.synthesize(epoch=0)
    assert "syn_adv" in s.synthesize(epoch=1)


def test_reset_l0_at_the_reset_epoch():
    s = make(reset_l0=True, reset_epoch=3)
    w = s.generator.l1.weight.detach().clone()
    s.cfg.g_steps = 0  # isolate the reset from the inner loop
    s.cfg.is_maml = 0
    s.meta_optimizer.step = lambda *a, **k: None
    s.inner_loop = lambda g, z, y, e, after_backward=None: (torch.rand(6, 1, 8, 8), torch.zeros(()), {})
    s.rounds_per_epoch = 2  # --reset_epoch 3 (1-based) = round number 6: epoch index 2, its last round
    for epoch, r in ((1, 1), (2, 0)):
        s.round_in_epoch = r
        s.synthesize(epoch=epoch)
        assert torch.equal(s.generator.l1.weight, w)
    s.round_in_epoch = 1
    s.synthesize(epoch=2)
    assert not torch.equal(s.generator.l1.weight, w)
    w3 = s.generator.l1.weight.detach().clone()
    s.round_in_epoch = 0
    s.synthesize(epoch=3)  # later rounds do not reset again
    assert torch.equal(s.generator.l1.weight, w3)


def test_source_warmup_yields_nothing_then_kd_batches():
    s = make(batch_size=4)
    src = DataFreeSource(s, batch_size=5, kd_steps=2, ep_steps=6, warmup=1)
    src.set_epoch(0)
    assert len(src) == 0 and list(src) == []
    assert len(s.pool) == 12  # three rounds of 4 images during warm-up
    src.set_epoch(1)
    batches = list(src)
    assert len(batches) == len(src) == 6 and batches[0].shape == (5, 1, 8, 8)
    stats = src.epoch_stats()
    assert stats["syn_time"] > 0 and stats["syn_images"] == 24


def test_teacher_without_batchnorm_is_refused_when_bn_weight_is_set():
    teacher = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(ValueError, match="BatchNorm"):
        FastMetaSynthesizer(teacher, TinyBNNet(), tiny_cfg(bn=1.0), DEV)
    FastMetaSynthesizer(teacher, TinyBNNet(), tiny_cfg(bn=0.0), DEV)  # fine without the BN term


METHOD_WEIGHTS = {
    "fast": {}, "fast_meta": {},
    "deepinv": dict(g_steps=4, lr_g=0.1),
    "cmi": dict(g_steps=3, cr=0.8, cr_T=0.2, bank_size=64, n_neg=16, head_dim=8),
    "dafl": dict(bn=0.0, adv=0.0, oh=1.0, act=0.1, balance=1.0, g_steps=1),
    "zskt": dict(bn=0.0, oh=0.0, adv=1.0, g_steps=1),
    "dfad": dict(bn=0.0, oh=0.0, adv=1.0, g_steps=1),
    "dfq": dict(bn=1.0, oh=1.0, adv=1.0, balance=1.0, g_steps=1),
}


def test_every_registered_method_has_a_weight_setting_here():
    assert set(METHOD_WEIGHTS) == set(SYNTHESIZERS)


@pytest.mark.parametrize("method", sorted(METHOD_WEIGHTS))
def test_every_method_runs_an_epoch_through_the_source(method):
    s = make(method, **METHOD_WEIGHTS[method])
    src = DataFreeSource(s, batch_size=5, kd_steps=2, ep_steps=4, warmup=0)
    src.set_epoch(0)
    batches = list(src)
    assert len(batches) == 4
    for b in batches:
        assert b.shape == (5, 1, 8, 8) and torch.isfinite(b).all()
    stats = src.epoch_stats()
    assert stats["syn_time"] > 0 and stats["syn_loss"] == stats["syn_loss"]
    assert s.last_images is not None and s.last_images.min() >= 0 and s.last_images.max() <= 1
    if s.uses_pool:
        assert len(s.pool) == 2 * s.cfg.batch_size
    # the state round-trips into a fresh synthesizer
    fresh = make(method, **METHOD_WEIGHTS[method])
    fresh.load_state_dict(s.state_dict())


@pytest.mark.parametrize("method", ["zskt", "dfad"])
def test_generative_adversary_is_the_real_student(method):
    s = make(method, **METHOD_WEIGHTS[method])
    stats = s.synthesize(epoch=0)
    # with the teacher in the student's place (the reference bug) this term would be exactly 0
    assert stats["syn_adv"] < 0


def test_deepinv_keeps_pixels_in_the_valid_range():
    s = make("deepinv", g_steps=5, lr_g=1.0)
    s.synthesize(epoch=0)
    imgs = s.pool.images()
    assert imgs.min() >= 0 and imgs.max() <= 1 and imgs.std() > 0


def test_cmi_bank_fills_and_contrastive_term_runs_with_and_without_cr():
    s = make("cmi", **METHOD_WEIGHTS["cmi"])
    stats = s.synthesize(epoch=0)
    assert s.bank.count == 6 and "syn_cr" in stats
    stats = s.synthesize(epoch=0)  # now with cached negatives
    assert s.bank.count == 12 and stats["syn_cr"] > 0
    s0 = make("cmi", **{**METHOD_WEIGHTS["cmi"], "cr": 0.0})  # the reference crashes here
    assert "syn_cr" not in s0.synthesize(epoch=0) and len(s0.pool) == 6


def _datafree_trainer(save_dir, seed):
    from datafree.api import build_trainer
    from engine.trainer import TrainConfig
    from engine.utils import seed_everything

    seed_everything(seed)
    teacher = make().teacher
    seed_everything(seed)
    student = TinyBNNet(width=4)
    train = TrainConfig(epochs=3, lr=0.05, schedule="cosine", save_dir=str(save_dir), progress=False, log_every=2)
    return build_trainer(teacher, student, "fast_meta", tiny_cfg(warmup=1, batch_size=4), train, None, T=4.0,
                         batch_size=5, kd_steps=2, ep_steps=4, device=DEV)


def test_resumed_data_free_run_equals_uninterrupted(tmp_path):
    a = _datafree_trainer(tmp_path / "a", 0)
    a.fit()
    b = _datafree_trainer(tmp_path / "b", 0)
    b.fit(until_epoch=2)
    c = _datafree_trainer(tmp_path / "b", 7)  # fresh objects, different seed: state only from last.pt
    c.resume(str(tmp_path / "b" / "last.pt"))
    c.fit()
    for (k, va), vc in zip(a.objective.student.state_dict().items(), c.objective.student.state_dict().values()):
        assert torch.equal(va, vc), k
    sa, sc = a.source.synth, c.source.synth
    assert len(sa.pool) == len(sc.pool) == 24  # 3 epochs x 2 rounds x 4 images
    assert torch.equal(sa.pool.images(), sc.pool.images())
    for va, vc in zip(sa.generator.state_dict().values(), sc.generator.state_dict().values()):
        assert torch.equal(va, vc)


def test_reset_bn_restores_generator_batchnorm_at_the_reset_epoch():
    s = make("fast", reset_bn=True, reset_epoch=2)  # 1-based: epoch index 1
    bn = s.generator.conv_blocks[0]
    s.synthesize(epoch=0)  # trains G in place: BN parameters and running statistics move
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    moved = bn.weight.detach().clone()
    s.maybe_reset(2)  # not the reset epoch: nothing happens
    assert torch.equal(bn.weight, moved)
    s.maybe_reset(1)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.weight.detach(), torch.ones_like(bn.weight))


def test_one_hot_term_is_weighted_cross_entropy_to_the_targets():
    s = make(bn=0.0, adv=0.0, oh=0.5)
    x = torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 3, 1])
    losses = s.inversion_losses(x, y, epoch=0)
    logits = s.teacher(x)
    by_hand = -(logits.log_softmax(1)[torch.arange(3), y]).mean() * 0.5
    assert set(losses) == {"oh"} and losses["oh"].item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_cmi_features_from_named_taps():
    s = make("cmi", **{**METHOD_WEIGHTS["cmi"], "cmi_layers": ["features.3:in", "features.5"]})
    s.teacher(torch.rand(2, 1, 8, 8))
    assert s.features().shape == (1, 16)  # hooks off outside synthesis: still the probe batch
    s.set_hooks(True)
    s.teacher(torch.rand(2, 1, 8, 8))
    assert s.features().shape == (2, 16)  # two 8-channel taps
    assert (s._means["features.5"] >= 0).all()  # the output of a ReLU
    s.synthesize(epoch=0)
    assert s.bank.count == 6

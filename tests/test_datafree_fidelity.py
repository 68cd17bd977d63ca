"""Data-free fidelity (issue 9): each term and schedule as the published runs computed it."""
import math

import numpy as np
import pytest
import torch

from datafree.losses import js_divergence


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _js_by_hand(s_rows, t_rows, T):
    """Fast-Datafree's form, written out with plain floats: M from the unclamped softmaxes,
    then P, Q, M clamped to [0.01, 0.99], value (KL(M||P) + KL(M||Q)) / 2, batch mean."""
    clamp = lambda v: min(max(v, 0.01), 0.99)  # noqa: E731
    total = 0.0
    for s, t in zip(s_rows, t_rows):
        p, q = _softmax(s, T), _softmax(t, T)
        m = [clamp(0.5 * (a + b)) for a, b in zip(p, q)]
        p, q = [clamp(v) for v in p], [clamp(v) for v in q]
        kl_mp = sum(mi * (math.log(mi) - math.log(pi)) for mi, pi in zip(m, p))
        kl_mq = sum(mi * (math.log(mi) - math.log(qi)) for mi, qi in zip(m, q))
        total += 0.5 * (kl_mp + kl_mq)
    return total / len(s_rows)


def test_js_divergence_is_the_reference_form():
    # logits chosen so that some probabilities fall outside [0.01, 0.99] at T = 3
    s = [[9.0, -6.0, 0.5, 1.0], [0.2, 0.1, -0.3, 14.0], [-12.0, 3.0, 3.5, 0.0]]
    t = [[-2.0, 8.0, 0.0, -9.0], [1.0, 1.0, 1.0, -16.0], [5.0, 5.0, -20.0, 2.0]]
    got = js_divergence(torch.tensor(s), torch.tensor(t), T=3.0).item()
    want = _js_by_hand(s, t, 3.0)
    assert got == pytest.approx(want, rel=1e-5)
    # and it is not the textbook JS on clamped probabilities (what the engine computed before)
    p = torch.softmax(torch.tensor(s) / 3, 1).clamp(0.01, 0.99)
    q = torch.softmax(torch.tensor(t) / 3, 1).clamp(0.01, 0.99)
    m = 0.5 * (p + q)
    textbook = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean().item()
    assert abs(textbook - want) > 1e-3


def test_js_divergence_gradient_reaches_both_sides():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5)
    js_divergence(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert np.isclose(js_divergence(t, t).item(), 0.0, atol=1e-7)


# ---- item 1: the generative baselines' student loss ------------------------------------------
from datafree.api import build_trainer, student_loss  # noqa: E402
from engine.trainer import TrainConfig  # noqa: E402
from kd.distillers import KD  # noqa: E402
from tests.test_datafree_methods import TinyBNNet, make, tiny_cfg  # noqa: E402


@pytest.mark.parametrize("method,loss,T", [("dafl", "kl", 1.0), ("zskt", "kl", 1.0), ("dfq", "kl", 1.0),
                                           ("dfad", "l1", 1.0), ("fast_meta", "kl", 20.0), ("cmi", "kl", 20.0),
                                           ("deepinv", "kl", 20.0), ("fast", "kl", 20.0)])
def test_default_student_loss_is_the_published_runs(method, loss, T):
    got = student_loss(method)
    assert (got.loss, got.T) == (loss, T)
    if method in ("dafl", "zskt", "dfq", "dfad"):
        assert "published" in got.describe()


def test_explicit_student_loss_overrides_and_says_so():
    got = student_loss("dafl", T=20.0)
    assert (got.loss, got.T) == ("kl", 20.0)
    assert "--T 20" in got.describe() and "KL at T=1" in got.describe()  # what the published runs used
    got = student_loss("dfad", kd_loss="kl", T=4.0)
    assert (got.loss, got.T) == ("kl", 4.0)
    with pytest.raises(ValueError, match="kl, l1"):
        student_loss("dfad", kd_loss="mse")


def test_l1_logit_loss_is_the_mean_absolute_difference():
    torch.manual_seed(0)
    student, teacher = TinyBNNet(width=4), TinyBNNet().eval()
    d = KD(student, teacher, weights=None, logit_loss="l1")
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    want = sum(abs(a - b) for ra, rb in zip(s.tolist(), t.tolist()) for a, b in zip(ra, rb)) / 12
    assert d.kd_term(s, t).item() == pytest.approx(want, rel=1e-6)
    assert KD(student, teacher).kd_term(s, t).item() != pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("method,formula", [("dfad", "L1 on logits"), ("zskt", "KL at T=1")])
def test_data_free_trainer_runs_the_published_student_loss(tmp_path, method, formula):
    synth = make(method)
    train = TrainConfig(epochs=1, lr=0.05, save_dir=str(tmp_path), progress=False)
    trainer = build_trainer(synth.teacher, synth.student, method, tiny_cfg(warmup=0), train, None,
                            batch_size=4, kd_steps=1, ep_steps=2, device=torch.device("cpu"), args={"method": method})
    assert trainer.objective.logit_loss == ("l1" if method == "dfad" else "kl")
    assert trainer.objective.T == 1.0
    trainer.logger.close()
    assert f"student loss: {formula}" in (tmp_path / "log.txt").read_text()


# ---- item 3: CMI as published ------------------------------------------------------------------
from datafree import SYNTHESIZERS, SynthesisConfig  # noqa: E402
from datafree.source import DataFreeSource  # noqa: E402
from registry.datasets import dataset_spec  # noqa: E402
from registry.models import get_model  # noqa: E402


def test_cmi_adversarial_term_from_the_first_round():
    s = make("cmi", warmup=5, cr=0.8, cr_T=0.2, bank_size=64, n_neg=8)
    assert "syn_adv" in s.synthesize(epoch=0)
    assert "syn_adv" not in make("fast_meta", warmup=5).synthesize(epoch=0)  # fast_meta keeps its gate


def test_cmi_resnet34_teacher_reads_the_inputs_of_its_stages():
    torch.manual_seed(0)
    teacher = get_model("resnet34", num_classes=10).eval().requires_grad_(False)
    assert teacher.cmi_taps == ["layer1:in", "layer2:in", "layer3:in", "layer4:in"]
    cfg = SynthesisConfig(num_classes=10, img_size=32, nc=3, batch_size=2, g_steps=1, nz=8, ngf=4,
                          bank_size=16, n_neg=4)
    s = SYNTHESIZERS["cmi"](teacher, TinyBNNet(in_chans=3, num_classes=10, width=4), cfg, torch.device("cpu"))
    assert s._order == teacher.cmi_taps
    assert s.head.net[0].in_features == 64 + 64 + 128 + 256  # the stage inputs' channel means
    other = get_model("resnet18", num_classes=10).eval().requires_grad_(False)
    s18 = SYNTHESIZERS["cmi"](other, TinyBNNet(in_chans=3, num_classes=10, width=4), cfg, torch.device("cpu"))
    assert len(s18._order) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in other.modules())


# ---- item 4: round counting --------------------------------------------------------------------
@pytest.mark.parametrize("rounds", [1, 10])
def test_epoch_schedules_fire_at_the_reference_rounds(rounds):
    """warmup 2, reset at epoch 3, latents re-sampled every epoch, over 4 epochs: the reference's
    1-based round counter gives adv from round 2R, the reset in round 3R only, re-samples at kR."""
    s = make("fast_meta", warmup=2, reset_l0=True, reset_epoch=3, meta_z=True, z_reinit=1, g_steps=1)
    adv, resets, resamples = [], [], []
    source = DataFreeSource(s, batch_size=2, kd_steps=1, ep_steps=rounds, warmup=2)
    orig_losses, orig_reset, orig_build = s.inversion_losses, s.generator.reset_l0, s.build_meta_optimizer

    def losses(x, y, epoch):
        out = orig_losses(x, y, epoch)
        adv.append("adv" in out)
        return out

    s.inversion_losses = losses
    s.generator.reset_l0 = lambda: resets.append(s.round_number(source.epoch)) or orig_reset()
    s.build_meta_optimizer = lambda: resamples.append(s.round_number(source.epoch)) or orig_build()
    for epoch in range(4):
        source.set_epoch(epoch)
        for _ in source:
            pass
    n = 4 * rounds
    assert adv == [r >= 2 * rounds for r in range(1, n + 1)]
    assert resets == [3 * rounds]
    assert resamples == [rounds * k for k in (1, 2, 3, 4)]


def test_sweeps_scale_the_reset_epoch_with_the_budget():
    import argparse

    import bench.reproduce as rp

    p = rp.PROTOCOLS["cifar10"]
    for budget, want in ((1.0, "140"), (0.05, "7")):
        b = rp.resolve_budget(p, argparse.Namespace(budget=budget, warmup=None, epochs=None, steps=None,
                                                    batch=None, g_scale=1.0))
        argv = rp.datafree_argv(p, "fast5", p.pairs[0], b, "cifar10", "T.pt", 0, "out",
                                argparse.Namespace(data_root=".", download=False, device="cpu", amp="off"))
        at = argv[argv.index("--reset_epoch") + 1]
        assert at == want and int(at) <= b["epochs"]
    assert "--reset_epoch" not in rp.datafree_argv(p, "cmi", p.pairs[0], b, "cifar10", "T.pt", 0, "out",
                                                   argparse.Namespace(data_root=".", download=False,
                                                                      device="cpu", amp="off"))


def test_log_says_when_no_reset_will_happen(tmp_path):
    synth = make("fast_meta")
    train = TrainConfig(epochs=3, lr=0.05, save_dir=str(tmp_path), progress=False)
    trainer = build_trainer(synth.teacher, synth.student, "fast_meta", tiny_cfg(reset_l0=True), train, None,
                            batch_size=4, kd_steps=1, ep_steps=2, device=torch.device("cpu"))
    trainer.logger.close()
    assert "no reset will happen" in (tmp_path / "log.txt").read_text()


# ---- item 5: the ImageNet recipe as logged -------------------------------------------------------
def test_meta_latents_persist_but_targets_are_drawn_every_round():
    s = make("fast_meta", meta_z=True, z_reinit=100)
    z1, y1 = s.latents(0)
    s.round_in_epoch = 1
    z2, y2 = s.latents(0)
    assert torch.equal(z1, z2) and not torch.equal(y1, y2)


def test_kd_samples_get_their_own_augmentation():
    s = make("fast_meta", augment="rrc_flip", rrc_scale=(0.75, 1.0), kd_augment="rrc_flip")
    assert s.augment[0].scale == (0.75, 1.0) and s.kd_augment[0].scale == (0.08, 1.0)
    s.synthesize(epoch=0)
    assert s.sample(3).shape == (3, 1, 8, 8)
    cifar = make("fast_meta")
    assert cifar.kd_augment is cifar.augment  # CIFAR: KD samples get the same crop + flip


def test_fast_imagenet_script_matches_the_logged_hyper_parameters():
    import os
    import re
    import shlex

    from kd import faster_data_free_kd as dfkd

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "fast_imagenet.sh")
    text = open(path).read()
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", text, flags=re.M))  # VAR=${VAR:-default}
    cmd = text[text.index("python kd/faster_data_free_kd.py"):].replace("\\\n", " ")
    cmd = re.sub(r'"\$\{INIT\[@\]\}"|\$\{EXTRA:-\}', "", cmd)
    cmd = re.sub(r'"\$(\w+)"', lambda m: defaults.get(m.group(1), "X"), cmd)
    words = shlex.split(cmd)[2:]
    a = dfkd.build_parser().parse_known_args(words)[0]
    rounds_per_epoch = a.ep_steps // a.kd_steps
    assert (a.g_steps, a.kd_steps, a.ep_steps, a.batch_size, a.T) == (50, 100, 1000, 100, 5.0)
    assert a.z_reinit * rounds_per_epoch == 50 and a.meta_z and a.is_maml == 0 and a.reptile_scale == 1.0
    assert (a.bn, a.oh, a.bn_mmt, a.lr_g, a.lr_z, a.lr_g_meta, a.lr_z_meta) == (0.1, 0.1, 0.9, 2e-4, 0.01, 1e-4, 5e-3)
    assert a.eta_min == 0 and a.keep == "last" and a.lr == 0.1 and a.warmup == 0


# ---- item 7: no silent flags -----------------------------------------------------------------
from kd import faster_data_free_kd as dfkd  # noqa: E402


@pytest.mark.parametrize("method,flags,named", [
    ("deepinv", ["--is_maml", "1"], ["--is_maml"]),
    ("fast_meta", ["--cr", "0.5"], ["--cr"]),
    ("fast", ["--act", "0.1", "--reset_l0", "1"], ["--act"]),
    ("fast_meta", ["--z_reinit", "3"], ["--z_reinit"]),  # no --meta_z: nothing re-samples
    ("dfad", ["--T", "20", "--pool_capacity", "10"], ["--pool_capacity", "--T"]),
    ("fast_meta", ["--is_maml", "0", "--reptile_scale", "1", "--lr_z", "0.1"], []),
    ("cmi", ["--cmi_layers", "layer1:in", "--cr_T", "0.2", "--keep", "last"], []),
])
def test_unused_flags_are_named(capsys, method, flags, named):
    argv = ["--method", method, "--dataset", "digits"] + flags
    args = dfkd.parse_args(argv)
    dfkd.warn_unused(args, dfkd.synthesis_config(args, dataset_spec("digits")), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(named)
    for line, flag in zip(err, named):
        assert line.startswith(f"warning: {method} does not use {flag}")


def test_seed_reaches_the_pool_shuffle():
    from datafree.pool import ImagePool

    args = dfkd.parse_args(["--method", "fast_meta", "--dataset", "digits", "--seed", "7"])
    assert dfkd.synthesis_config(args, dataset_spec("digits")).seed == 7
    orders = []
    for seed in (0, 7, 7):
        pool = ImagePool("cpu", seed=seed)
        pool.add(torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1) / 15)
        orders.append(pool.sample(16).flatten().tolist())
    assert orders[1] == orders[2] and orders[0] != orders[1]
    s = make("fast_meta", seed=7)
    assert s.pool.generator.initial_seed() == 7


def test_deterministic_flag_sets_cudnn(tmp_path):
    from engine.launch import prepare_run

    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        args = dfkd.parse_args(["--dataset", "digits", "--deterministic", "--save_dir", str(tmp_path)])
        torch.backends.cudnn.benchmark = True
        _, logger, _ = prepare_run(args, "x")
        logger.close()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


# ---- item 9: second-order MAML through a differentiable Adam -----------------------------------
from datafree.fast_meta import adam_step, copy_weights  # noqa: E402


def test_functional_adam_matches_torch_adam():
    torch.manual_seed(0)
    a = torch.randn(5, requires_grad=True)
    b = a.detach().clone()
    m, v = torch.zeros(5), torch.zeros(5)
    opt = torch.optim.Adam([a], lr=0.05, betas=(0.5, 0.999))
    for step in range(1, 6):
        target = torch.randn(5)
        loss = ((a - target) ** 4).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        g = 4 * (b - target) ** 3
        b, m, v = adam_step(b, g, m, v, step, lr=0.05)
    assert torch.allclose(a.detach(), b, atol=1e-6)


def _maml2(**kw):
    # deterministic augmentation (no crop, no flip) so that the loss is a function of theta alone
    s = make("fast_meta", is_maml=2, g_steps=3, keep="last", pad=0, flip=False, warmup=0, **kw)
    torch.manual_seed(1)
    z = torch.randn(s.generator.latent_shape(6), requires_grad=True)
    y = torch.randint(4, (6,))
    return s, z, y


def test_truncated_to_zero_steps_is_the_gradient_at_the_adapted_weights():
    s, z, y = _maml2(maml_truncate=0)
    with s.synthesis():
        s.meta_optimizer.zero_grad(set_to_none=True)
        s._second_order_round(z.detach().clone().requires_grad_(), y, epoch=0)
        meta = [p.grad.clone() for p in s.generator.parameters()]
        # the first-order path's inner loop (torch.optim.Adam on a module copy) to theta'_K, then dL/dtheta'_K
        fast = s.fast_generator
        copy_weights(fast, s.generator)
        fast.train()
        z_k = z.detach().clone().requires_grad_()
        s.inner_loop(fast, z_k, y, 0)
        fast.zero_grad(set_to_none=True)
        sum(s.inversion_losses(s.augment(fast(z_k)), y, 0).values()).backward()
    for g, p in zip(meta, fast.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-3, atol=1e-6)


def test_second_order_meta_gradient_of_one_adam_step_by_hand():
    """One inner Adam step from fresh state is theta' = theta - lr * g / (|g| + eps) (m_hat = g,
    v_hat = g^2), so the meta-gradient is u - lr * H (a'(g) * u) with u = dL/dtheta at theta',
    a'(g) = eps / (|g| + eps)^2 and H the Hessian at theta: computed here with two autograd
    calls, independently of the inner loop (finite differences are useless here: Adam's first
    step is nearly a sign function)."""
    from torch.func import functional_call

    s, z, y = _maml2(lr_z=0.0)  # z fixed, so theta alone moves
    s.cfg.g_steps = 1
    s.generator.l1.bias.requires_grad_(False)  # feeds a BatchNorm: true gradient 0
    names = [n for n, p in s.generator.named_parameters() if p.requires_grad]
    theta = [dict(s.generator.named_parameters())[n] for n in names]
    lr, eps = s.cfg.lr_g, 1e-8

    def loss_at(ps):
        buffers = {k: v.clone() for k, v in s.generator.named_buffers()}
        x = functional_call(s.generator, (dict(zip(names, ps)), buffers), (z.detach(),))
        return sum(s.inversion_losses(s.augment(x), y, 0).values())

    with s.synthesis():
        s.generator.train()
        s.meta_optimizer.zero_grad(set_to_none=True)
        s._second_order_round(z.detach().clone().requires_grad_(), y, epoch=0)
        meta = [p.grad.clone() for p in theta]
        g = torch.autograd.grad(loss_at(theta), theta, create_graph=True)
        adapted = [(p - lr * gi / (gi.abs() + eps)).detach().requires_grad_() for p, gi in zip(theta, g)]
        u = torch.autograd.grad(loss_at(adapted), adapted)
        w = [eps / (gi.detach().abs() + eps) ** 2 * ui for gi, ui in zip(g, u)]
        hw = torch.autograd.grad(sum((gi * wi).sum() for gi, wi in zip(g, w)), theta)
    want = [ui - lr * h for ui, h in zip(u, hw)]
    for got, exp in zip(meta, want):
        assert torch.allclose(got, exp, rtol=1e-3, atol=1e-7)
    # the second-order part is not negligible here: the first-order answer (u) differs
    assert any(not torch.allclose(ui, exp, rtol=1e-3, atol=1e-7) for ui, exp in zip(u, want))


# ---- item 8: precision -------------------------------------------------------------------------
def test_bf16_training_steps_and_fp32_evaluation_are_recorded(tmp_path):
    from engine.logger import RunLogger
    from engine.trainer import Trainer
    from tests.kdtools import build, tiny_batch, tiny_info

    info = tiny_info()
    d = build("kd", info=info)
    x, y = tiny_batch(info, batch=8)
    seen = []
    d.student.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    cfg = TrainConfig(epochs=1, lr=0.01, schedule="constant", save_dir=str(tmp_path), progress=False, amp="bf16")
    logger = RunLogger(str(tmp_path))
    metrics = Trainer(d, [(x, y)] * 2, [(x, y)], cfg, torch.device("cpu"), logger).fit()
    logger.close()
    assert {dt for train, dt in seen if train} == {torch.bfloat16}  # KD steps under CPU bf16 autocast
    assert {dt for train, dt in seen if not train} == {torch.float32}  # the test set in fp32
    assert metrics["precision"] == {"train_steps": "bf16", "evaluation": "fp32"}
    assert "precision: training steps bf16" in (tmp_path / "log.txt").read_text()
    off = Trainer(build("kd", info=info), [(x, y)], None,
                  TrainConfig(epochs=1, save_dir=str(tmp_path / "b"), progress=False), torch.device("cpu"))
    assert off.precision["train_steps"] == "fp32"  # auto on CPU: fp32


# ---- item 6: a pool that fits the real runs ------------------------------------------------------
from datafree.pool import ImagePool, iter_image_set  # noqa: E402

IMG = (3, 4, 4)
IMG_BYTES = 3 * 4 * 4  # uint8


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + IMG, generator=g)


def test_tiered_pool_spills_to_host_and_disk_and_samples_like_a_device_pool(tmp_path):
    flat = ImagePool("cpu", seed=5)
    tiered = ImagePool("cpu", seed=5, device_bytes=10 * IMG_BYTES, host_bytes=15 * IMG_BYTES,
                       spill_dir=str(tmp_path))
    for i in range(4):
        batch = _images(12, i)
        flat.add(batch)
        tiered.add(batch)
        for _ in range(3):
            assert torch.equal(flat.sample(7), tiered.sample(7))
    assert tiered.tier_sizes() == {"device": 10, "host": 15, "disk": 23}
    assert (tmp_path / "pool_spill.bin").exists()
    assert torch.equal(flat.images(), tiered.images())
    with pytest.raises(ValueError, match="spill"):
        ImagePool("cpu", device_bytes=IMG_BYTES, host_bytes=IMG_BYTES).add(_images(3, 0))


def test_capacity_never_evicts_the_initial_images():
    pool = ImagePool("cpu", capacity=4)
    init = _images(3, 9)
    pool.add_init(init)
    for i in range(5):
        pool.add(_images(3, i))
    assert len(pool) == 3 + 4 and pool.n_init == 3
    kept = pool.images()
    assert torch.allclose(kept[:3], init, atol=0.5 / 255 + 1e-6)
    newest = torch.cat([_images(3, 3), _images(3, 4)])[-4:]  # the ring holds the 4 newest synthesized
    ring = kept[3:]
    assert all(any(torch.allclose(r, q, atol=0.5 / 255 + 1e-6) for r in ring) for q in newest)


def test_checkpoint_state_never_holds_unused_slots():
    pool = ImagePool("cpu", capacity=100)
    pool.add(_images(5, 0))
    assert pool.state_dict()["data"].shape[0] == 5


def test_persisted_pool_writes_only_new_images_and_resumes_exactly(tmp_path):
    a = ImagePool("cpu", seed=2, capacity=8, persist_dir=str(tmp_path / "pool"))
    a.add_init(_images(2, 7))
    a.add(_images(5, 0))
    s1 = a.state_dict()
    a.add(_images(4, 1))  # wraps the ring: overwrites one of the first batch
    a.sample(3)
    s2 = a.state_dict()
    assert "data" not in s2 and s2["chunks"] == ["chunk_000000.pt", "chunk_000001.pt"]
    c0 = torch.load(tmp_path / "pool" / "chunk_000000.pt", weights_only=True)
    c1 = torch.load(tmp_path / "pool" / "chunk_000001.pt", weights_only=True)
    assert len(c0["slots"]) == 7 and len(c1["slots"]) == 4  # each save holds only what changed
    b = ImagePool("cpu", persist_dir=str(tmp_path / "pool"))
    b.load_state_dict(s2)
    assert torch.equal(a.images(), b.images()) and len(b) == 10
    assert torch.equal(a.sample(6), b.sample(6))  # same shuffle position and RNG
    c = ImagePool("cpu", persist_dir=str(tmp_path / "pool"))
    c.load_state_dict(s1)  # an older checkpoint still restores its own pool
    assert len(c) == 7


def test_data_free_checkpoint_references_pool_chunks(tmp_path):
    from datafree.api import build_trainer

    synth = make("fast_meta")
    train = TrainConfig(epochs=2, lr=0.05, save_dir=str(tmp_path), progress=False)
    trainer = build_trainer(synth.teacher, synth.student, "fast_meta", tiny_cfg(warmup=0), train, None,
                            batch_size=4, kd_steps=1, ep_steps=2, device=torch.device("cpu"))
    trainer.fit()
    trainer.logger.close()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    pool_state = ckpt["source"]["synthesizer"]["pool"]
    assert "data" not in pool_state and len(pool_state["chunks"]) == 2
    sizes = [len(torch.load(tmp_path / "pool" / c, weights_only=True)["slots"]) for c in pool_state["chunks"]]
    assert sizes == [12, 12]  # 2 rounds of 6 images per epoch, each saved once


def test_init_set_streams_as_uint8_chunks(tmp_path):
    x = torch.rand(5, 3, 6, 6)
    torch.save(x, tmp_path / "init.pt")
    chunks = list(iter_image_set(str(tmp_path / "init.pt"), 4, 3, chunk=2))
    assert [c.shape[0] for c in chunks] == [2, 2, 1] and all(c.dtype == torch.uint8 for c in chunks)
    assert all(c.shape[-2:] == (4, 4) for c in chunks)

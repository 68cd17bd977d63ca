"""The speed paths: optimiser kernels, no read-backs in inner loops, one teacher forward per
step, hooks off outside synthesis, bf16 synthesis, torch.compile. Behaviour, not timings."""
import copy

import pytest
import torch
import torch.nn as nn

from datafree.fast_meta import copy_weights
from engine.data import FixedSteps
from engine.trainer import TrainConfig, Trainer
from engine.utils import optimizer_impl
from kd.distillers import KD, Weights
from tests.test_datafree_methods import TinyBNNet, make

DEV = torch.device("cpu")


def test_optimizer_impl_names_and_errors():
    assert optimizer_impl("auto", DEV) == {"fused": True}
    assert optimizer_impl("loop", DEV) == {"foreach": False}
    assert optimizer_impl("foreach", DEV) == {"foreach": True}
    with pytest.raises(ValueError, match="fused, foreach, loop"):
        optimizer_impl("turbo", DEV)


def _kd_trainer(tmp_path, name, **cfg):
    torch.manual_seed(0)
    teacher, student = TinyBNNet().eval(), TinyBNNet(width=4)
    batches = [torch.randn(8, 1, 8, 8) for _ in range(4)]
    config = TrainConfig(epochs=1, lr=0.1, save_dir=str(tmp_path / name), progress=False, **cfg)
    objective = KD(student, teacher, T=4.0, weights=Weights(r=0.0, a=1.0))
    return Trainer(objective, FixedSteps(batches, 4), None, config, DEV)


def test_fused_and_loop_sgd_train_the_same_weights(tmp_path):
    fused, loop = _kd_trainer(tmp_path, "fused"), _kd_trainer(tmp_path, "loop", opt_impl="loop")
    assert fused.optimizer.defaults["fused"] and not loop.optimizer.defaults["foreach"]
    fused.fit()
    loop.fit()
    for a, b in zip(fused.objective.student.parameters(), loop.objective.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


READBACKS = ("item", "tolist", "__bool__", "__float__", "__int__")


def count_readbacks(monkeypatch, fn) -> int:
    """How often Python reads a tensor value back (each is a host sync on a GPU)."""
    calls = [0]
    for name in READBACKS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **kw):
            calls[0] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    fn()
    monkeypatch.undo()
    return calls[0]


@pytest.mark.parametrize("method,kw", [("fast_meta", {}), ("fast", {}), ("deepinv", {}),
                                       ("cmi", {"cr": 0.8, "bank_size": 64, "n_neg": 16})])
def test_inner_loops_read_nothing_back_per_step(monkeypatch, method, kw):
    """Read-backs per round must not grow with g_steps: the inner loop never waits for the device."""
    counts = []
    for g in (2, 6):
        s = make(method, g_steps=g, **kw)
        s.synthesize(epoch=0)  # first round (lazy set-up) not counted
        counts.append(count_readbacks(monkeypatch, lambda: s.synthesize(epoch=1)))
    assert counts[0] == counts[1], f"{method}: {counts[0]} read-backs at g_steps 2, {counts[1]} at 6"


def count_calls(module: nn.Module):
    n = [0]
    module.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    return n


@pytest.mark.parametrize("method,kw,per_step", [("fast_meta", {}, 1), ("fast", {}, 1), ("deepinv", {}, 1),
                                                ("cmi", {"cr": 0.8}, 2), ("cmi", {"cr": 0.0}, 1),
                                                ("dfq", {"balance": 1.0}, 1)])
def test_teacher_forward_shared_between_loss_terms(method, kw, per_step):
    """bn, oh, adv (and balance/act) all read one teacher forward per inner step; CMI's local
    view is a second, different input."""
    s = make(method, g_steps=3, **kw)
    n = count_calls(s.teacher)
    s.synthesize(epoch=0)
    assert n[0] == 3 * per_step


def test_kd_step_runs_the_teacher_once_and_hooks_stay_off(tmp_path):
    s = make("cmi", cr=0.8)
    s.synthesize(epoch=0)
    bn_losses = [h.loss for h in s.bn_loss.hooks]
    means = dict(s._means)
    n = count_calls(s.teacher)
    trainer = Trainer(KD(s.student, s.teacher, T=4.0, weights=Weights(r=0.0, a=1.0)),
                      FixedSteps([s.sample(6) for _ in range(3)], 3), None,
                      TrainConfig(epochs=1, save_dir=str(tmp_path), progress=False), DEV)
    trainer.train_one_epoch(0)
    assert n[0] == 3
    assert all(h.loss is b for h, b in zip(s.bn_loss.hooks, bn_losses))  # BN hooks did not run
    assert all(s._means[k] is v for k, v in means.items())  # nor did CMI's feature hooks


def test_copy_weights_copies_parameters_and_buffers_in_place():
    a, b = TinyBNNet(), TinyBNNet()
    b.train()(torch.randn(4, 1, 8, 8))  # b's BN running stats move
    ptr = [p.data_ptr() for p in a.parameters()]
    copy_weights(a, b)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert ptr == [p.data_ptr() for p in a.parameters()]  # same storage: no new module per round


def test_fast_meta_round_starts_from_the_meta_generator():
    s = make("fast_meta", g_steps=2)
    s.synthesize(epoch=0)
    g = copy.deepcopy(s.generator.state_dict())
    s.fast_generator.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    seen = {}

    def record(m, _inp):
        seen.setdefault("w", copy.deepcopy(m.state_dict()))

    s.fast_generator.register_forward_pre_hook(record)
    s.synthesize(epoch=1)
    for k, v in g.items():
        assert torch.equal(seen["w"][k], v), k  # G' began the round as a copy of G, whatever it held before


def test_bf16_synthesis_runs_and_fp16_is_refused():
    s = make("fast_meta", amp="bf16")
    stats = s.synthesize(epoch=0)
    assert all(v == v and abs(v) < float("inf") for v in stats.values())
    assert len(s.pool) == 6 and s.sample(4).dtype == torch.float32
    with pytest.raises(ValueError, match="off or bf16"):
        make("fast", amp="fp16")


def test_compiled_step_matches_eager_and_checkpoints_stay_plain(tmp_path):
    eager, compiled = _kd_trainer(tmp_path, "eager"), _kd_trainer(tmp_path, "compiled", compile=True)
    eager.fit()
    compiled.fit()
    for a, b in zip(eager.objective.student.parameters(), compiled.objective.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    ckpt = torch.load(compiled.last_path, weights_only=False)
    assert set(ckpt["model"]) == set(eager.objective.student.state_dict())  # no _orig_mod. prefixes


def test_random_resized_crop_boxes_and_gradient():
    from engine.data import random_resized_crop

    x = torch.rand(3, 2, 16, 16)
    torch.testing.assert_close(random_resized_crop(x, (16, 16), scale=(1.0, 1.0), ratio=(1.0, 1.0)), x)
    ramp = ((torch.arange(32) + 0.5) / 32).expand(5, 1, 32, 32).clone().requires_grad_(True)
    out = random_resized_crop(ramp, (32, 32), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    span = out[:, :, :, -1] - out[:, :, :, 0]  # a box of half the width, sampled at 32 centres
    torch.testing.assert_close(span, torch.full_like(span, 0.5 * 31 / 32))
    out.sum().backward()
    assert ramp.grad.abs().sum() > 0

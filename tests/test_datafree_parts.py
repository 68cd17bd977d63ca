"""Loss terms, generators and the image pool of data-free synthesis, against hand-computed values."""
import math

import pytest
import torch
import torch.nn as nn

from datafree.generator import DeepGenerator, Generator
from datafree.losses import (BNStatHook, BNStatLoss, activation_loss, balance_loss, masked_adversarial_kl,
                             total_variation)
from kd.losses import kd_kl_div
from datafree.pool import ImagePool


def test_bn_stat_loss_plain_and_with_momentum():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    bn.eval()
    hook = BNStatHook(bn, momentum=0.9)
    # channel 0 holds {0, 2} (mean 1, biased var 1); channel 1 holds {1, 1} (mean 1, var 0)
    x = torch.tensor([[[[0.0]], [[1.0]]], [[[2.0]], [[1.0]]]])
    bn(x)
    # r = ||[2, .5] - [1, 0]|| + ||[1, -1] - [1, 1]|| = sqrt(1.25) + 2
    assert hook.loss.item() == pytest.approx(math.sqrt(1.25) + 2.0)
    hook.update_momentum()  # first call copies: ema = (mean [1, 1], var [1, 0])
    # second round: channel 0 {4, 4} (mean 4, var 0), channel 1 {0, 0} (mean 0, var 0)
    x2 = torch.tensor([[[[4.0]], [[0.0]]], [[[4.0]], [[0.0]]]])
    bn(x2)
    mean = 0.1 * torch.tensor([4.0, 0.0]) + 0.9 * torch.tensor([1.0, 1.0])  # [1.3, 0.9]
    var = 0.1 * torch.tensor([0.0, 0.0]) + 0.9 * torch.tensor([1.0, 0.0])  # [0.9, 0]
    want = torch.linalg.vector_norm(torch.tensor([2.0, 0.5]) - var) + torch.linalg.vector_norm(
        torch.tensor([1.0, -1.0]) - mean)
    assert hook.loss.item() == pytest.approx(want.item(), rel=1e-6)
    hook.update_momentum()  # ema <- 0.9 ema + 0.1 last = [1.3, 0.9], [0.9, 0]
    assert torch.allclose(hook.ema_mean, torch.tensor([1.3, 0.9]))
    assert torch.allclose(hook.ema_var, torch.tensor([0.9, 0.0]))


def test_bn_stat_loss_sums_layers_and_refuses_models_without_bn():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)).eval()
    loss = BNStatLoss(net)
    net(torch.randn(4, 1, 3, 3))
    assert loss.value().item() == pytest.approx(sum(h.loss.item() for h in loss.hooks))
    assert len(loss.hooks) == 2
    loss.set_enabled(False)
    before = [h.loss for h in loss.hooks]
    net(torch.randn(4, 1, 3, 3))
    assert all(h.loss is b for h, b in zip(loss.hooks, before))
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        BNStatLoss(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_masked_adversarial_kl_by_hand():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # sample 0 agrees (class 0), sample 1 does not
    p_t = torch.softmax(t[0], 0)
    kl0 = (p_t * (p_t.log() - torch.log_softmax(s[0], 0))).sum()
    assert masked_adversarial_kl(s, t).item() == pytest.approx(-(kl0.item()) / 2)


def test_kd_kl_div_matches_torch_batchmean_times_t2():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ref = nn.functional.kl_div(torch.log_softmax(s / 4, 1), torch.softmax(t / 4, 1), reduction="batchmean") * 16
    assert kd_kl_div(s, t, T=4).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_kl_div(t, t, T=4).item() == pytest.approx(0.0, abs=1e-6)


def test_activation_and_balance():
    f = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    assert activation_loss(f).item() == pytest.approx(-1.5)
    # uniform batch-mean prediction over 2 classes: sum p log p = log(1/2)
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert balance_loss(logits).item() == pytest.approx(math.log(0.5), rel=1e-4)
    # all mass on one class gives 0, the maximum
    assert balance_loss(torch.tensor([[50.0, 0.0], [50.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-5)


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    # right |0-1|,|2-3| -> 1; down |0-2|,|1-3| -> 2; diag (1,0)-(0,1): |2-1| = 1; (0,0)-(1,1): 3
    assert total_variation(x).item() == pytest.approx(1 + 2 + 1 + 3)


def test_generators_match_reference_sizes():
    g = Generator(nz=256, ngf=64, img_size=32, nc=3)
    assert sum(p.numel() for p in g.parameters()) == 2_328_899
    assert sum(p.numel() for p in Generator(nz=512).parameters()) == 4_426_051
    out = g(torch.randn(3, 256))
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    d = DeepGenerator()
    assert sum(p.numel() for p in d.parameters()) == 592_451
    assert d(torch.randn(1, *d.latent_shape(1)[1:])).shape == (1, 3, 224, 224)
    bn_weight = g.conv_blocks[0].weight.clone()
    g.reset_l0()
    assert torch.equal(g.conv_blocks[0].weight, bn_weight)  # the BN scale is left alone


@pytest.mark.parametrize("storage", ["uint8", "fp16"])
def test_pool_samples_what_was_added(storage):
    pool = ImagePool(torch.device("cpu"), storage=storage)
    a = torch.rand(6, 1, 4, 4)
    b = torch.rand(5, 1, 4, 4)
    pool.add(a)
    pool.add(b)
    assert len(pool) == 11
    tol = 0.5 / 255 + 1e-6 if storage == "uint8" else 1e-3
    stored = torch.cat([a, b])
    assert (pool.images() - stored).abs().max() <= tol
    got = pool.sample(11)  # one full shuffle: every image exactly once
    match = (got[:, None] - stored[None]).abs().flatten(2).amax(2) <= tol
    assert match.any(1).all() and match.sum(0).eq(1).all()


def test_capped_pool_drops_oldest_and_state_round_trips():
    pool = ImagePool(torch.device("cpu"), capacity=4, seed=3)
    first, second = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    pool.add(first)
    pool.add(second)
    assert len(pool) == 4
    assert pool.images().sum().item() == 3 * 4  # three "ones" images and one "zeros" image kept
    clone = ImagePool(torch.device("cpu"))
    clone.load_state_dict(pool.state_dict())
    assert torch.equal(clone.sample(4), pool.sample(4))

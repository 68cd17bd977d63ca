"""Methods with their own training step: DML (peers), BYOT (side branches), MLKD (rotations),
triplet / triplet_kc, UDA (augmented view) and multiteacher. Losses are checked against
explicit numpy computations on small fixed tensors; the distillers on 16x16 inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdtools import trainer_for
from kd.distillers import DataInfo, Weights, get_distiller_class
from kd.distillers.byot import byot_feature_loss, byot_kd_loss, byot_losses
from kd.distillers.dml import dml_losses, mutual_kl
from kd.distillers.mlkd import align_loss, corr_loss, rotations, supcon_loss
from kd.distillers.multiteacher import multi_teacher_kd
from kd.distillers.triplet import cosine_embedding, pick_negatives, triplet_hinge, triplet_kd_loss
from kd.distillers.uda import augment_batch
from registry.models import get_model

NC = 10
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def info16(n: int = 32) -> DataInfo:
    labels = torch.arange(n) % NC
    return DataInfo(num_classes=NC, in_chans=3, image_size=16, mean=MEAN, std=STD, num_samples=n, labels=labels)


def make(method: str, teacher: str = "resnet8", student: str = "resnet8", weights=None, T: float = 4.0, **options):
    torch.manual_seed(0)
    cls = get_distiller_class(method)
    t = get_model(teacher, num_classes=NC).eval() if cls.needs_teacher else None
    s = get_model(student, num_classes=NC)
    return cls(s, t, info16(), T=T, weights=weights, options=cls.Options(**options))


def batch16(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % NC


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_b || q_b) per row, by an explicit loop."""
    return np.array([sum(p[b, c] * math.log(p[b, c] / q[b, c]) for c in range(p.shape[1])) for b in range(len(p))])


def np_ce(z: np.ndarray, y) -> float:
    p = np_softmax(z)
    return float(np.mean([-math.log(p[b, int(y[b])]) for b in range(len(z))]))


def capture_inputs(module: nn.Module, store: list):
    return module.register_forward_pre_hook(lambda _m, inp: store.append(inp[0].detach().clone()))


def capture_outputs(module: nn.Module, store: list):
    return module.register_forward_hook(lambda _m, _i, out: store.append(out.detach().clone()))


def eval_batches(n_batches: int = 1, n: int = 8):
    return [batch16(n, seed=10 + i) for i in range(n_batches)]


# ------------------------------------------------------------------------------------------ DML
Z1 = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4], [-1.0, 2.5, 0.0, 1.0]])
Z2 = torch.tensor([[0.0, 1.0, 0.5, -0.5], [1.5, -0.2, 0.0, 0.4], [0.3, 0.3, 2.0, -1.0]])
Z3 = torch.tensor([[-0.5, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 1.0], [1.0, -1.0, 0.5, 0.5]])
Y3 = torch.tensor([0, 3, 1])


def test_dml_mutual_term_is_kl_of_the_other_peer_to_this_one_averaged_over_peers():
    p1, p2, p3 = (np_softmax(np64(z)) for z in (Z1, Z2, Z3))
    kl_2_1 = np_kl_rows(p2, p1).mean()  # KL(p2 || p1), batchmean
    kl_3_1 = np_kl_rows(p3, p1).mean()
    kl_1_2 = np_kl_rows(p1, p2).mean()
    assert mutual_kl(Z1, [Z2]).item() == pytest.approx(kl_2_1, rel=1e-5)
    assert abs(kl_2_1 - kl_1_2) > 1e-2  # the direction matters on this case
    losses = dml_losses([Z1, Z2, Z3], Y3)
    assert set(losses) == {"ce", "ce_peer2", "ce_peer3", "dml_peer1", "dml_peer2", "dml_peer3"}
    assert losses["dml_peer1"].item() == pytest.approx((kl_2_1 + kl_3_1) / 2, rel=1e-5)
    assert losses["dml_peer2"].item() == pytest.approx((kl_1_2 + np_kl_rows(p3, p2).mean()) / 2, rel=1e-5)
    assert losses["ce_peer3"].item() == pytest.approx(np_ce(np64(Z3), Y3), rel=1e-5)


def test_dml_peer_losses_only_reach_their_own_peer():
    d = make("dml")
    d.freeze().train()
    assert d.w.r == 1.0 and d.w.b == 1.0 and d.teacher is None
    losses = d(batch16())
    (losses["ce"] + losses["dml_peer1"]).backward()
    peer2 = d.extra_modules()["peer2"]
    assert all(p.grad is None for p in peer2.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    d.zero_grad(set_to_none=True)
    losses = d(batch16())
    (losses["ce_peer2"] + losses["dml_peer2"]).backward()
    assert all(p.grad is None for p in d.student.parameters())
    assert d.loss_weight("dml_peer2") == 1.0 and d.loss_weight("ce_peer2") == 1.0


def test_dml_peers_come_from_the_option_or_copy_the_student_with_a_fresh_init():
    d = make("dml")
    peer = d.extra_modules()["peer2"]
    assert type(peer) is type(d.student) and peer.model_name == "resnet8"
    assert not torch.equal(peer.conv1.weight, d.student.conv1.weight)
    d3 = make("dml", dml_peers=("resnet14", "resnet8"))
    assert list(d3.extra_modules()) == ["peer2", "peer3"] and d3.extra_modules()["peer2"].model_name == "resnet14"
    d3.eval()
    x, _ = batch16()
    with torch.no_grad():
        heads = d3.eval_heads(x)
        assert list(heads) == ["student", "peer2", "peer3"]
        assert torch.allclose(heads["peer2"], d3.extra_modules()["peer2"](x))


def test_dml_peers_differ_from_the_student_even_when_the_run_reseeds_in_between():
    torch.manual_seed(0)
    student = get_model("resnet8", num_classes=NC)
    torch.manual_seed(0)  # as kd/train.py does before building the distiller
    state = torch.get_rng_state()
    d = get_distiller_class("dml")(student, None, info16())
    assert torch.equal(torch.get_rng_state(), state)  # the peers are drawn from a forked generator
    peer = d.extra_modules()["peer2"]
    assert not torch.equal(peer.conv1.weight, student.conv1.weight)
    torch.manual_seed(0)
    again = get_distiller_class("dml")(get_model("resnet8", num_classes=NC), None, info16())
    assert torch.equal(again.extra_modules()["peer2"].conv1.weight, peer.conv1.weight)  # reproducible


def test_dml_trainer_epoch_reports_every_peer(tmp_path):
    d = make("dml")
    trainer = trainer_for(d, [batch16(8, seed=i) for i in range(2)], tmp_path, epochs=1, test=eval_batches())
    stats = trainer.fit()["history"][0]
    assert {"top1_student", "top1_peer2", "loss_ce_peer2", "loss_dml_peer1"} <= set(stats)
    assert stats["top1"] == stats["top1_student"]


# ----------------------------------------------------------------------------------------- BYOT
def test_byot_terms_equal_the_explicit_formulas():
    z4 = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]])
    z1 = torch.tensor([[0.2, 0.1, 0.9], [1.0, 0.0, -0.5]])
    T = 3.0
    q = np_softmax(np64(z4) / T)
    log_p = np.log(np_softmax(np64(z1) / T))
    soft_ce = -np.mean([sum(q[b, c] * log_p[b, c] for c in range(3)) for b in range(2)])
    assert byot_kd_loss(z1, z4, T).item() == pytest.approx(T * T * soft_ce, rel=1e-5)
    # the feature term: squared differences where either is positive, summed (not averaged)
    f1 = torch.tensor([[0.5, -1.0, -0.2], [2.0, -0.3, 0.0]])
    f4 = torch.tensor([[1.0, -0.5, 0.4], [0.0, -2.0, 0.0]])
    expect = sum((a - b) ** 2 for ra, rb in zip(f1.tolist(), f4.tolist()) for a, b in zip(ra, rb) if a > 0 or b > 0)
    assert expect == pytest.approx(0.25 + 0.36 + 4.0)
    assert byot_feature_loss(f1, f4).item() == pytest.approx(expect, rel=1e-6)
    y = torch.tensor([2, 0])
    alpha, beta = 0.1, 1e-2
    losses = byot_losses(z4, f4, [z1], [f1], y, alpha, T, beta)
    assert set(losses) == {"ce", "ce_branch1", "byot_kd_branch1", "byot_feat_branch1"}
    assert losses["ce"].item() == pytest.approx((1 - alpha) * np_ce(np64(z4), y), rel=1e-5)
    assert losses["ce_branch1"].item() == pytest.approx((1 - alpha) * np_ce(np64(z1), y), rel=1e-5)
    assert losses["byot_kd_branch1"].item() == pytest.approx(alpha * T * T * soft_ce, rel=1e-5)
    assert losses["byot_feat_branch1"].item() == pytest.approx(beta * expect, rel=1e-5)


def test_byot_targets_are_detached():
    z4 = torch.randn(3, 5, requires_grad=True)
    f4 = torch.randn(3, 4, requires_grad=True)
    z1 = torch.randn(3, 5, requires_grad=True)
    f1 = torch.randn(3, 4, requires_grad=True)
    (byot_kd_loss(z1, z4, 3.0) + byot_feature_loss(f1, f4)).backward()
    assert z4.grad is None and f4.grad is None and z1.grad is not None and f1.grad is not None


def test_byot_branches_sit_on_the_student_stages_and_are_reported():
    d = make("byot")
    assert d.teacher is None and list(d.extra_modules()) == ["branch1", "branch2"]  # resnet8: 3 stages
    seen, stage_out = [], []
    hooks = [capture_inputs(b, seen) for b in d.branches]
    hooks += [capture_outputs(d.student.layer1, stage_out), capture_outputs(d.student.layer2, stage_out)]
    x, y = batch16()
    d.freeze().train()
    losses = d((x, y))
    assert torch.equal(seen[0], stage_out[0]) and torch.equal(seen[1], stage_out[1])
    assert set(losses) == {"ce", "ce_branch1", "ce_branch2", "byot_kd_branch1", "byot_kd_branch2",
                           "byot_feat_branch1", "byot_feat_branch2"}
    assert d.loss_weight("ce_branch2") == d.w.r == 1.0 and d.loss_weight("byot_kd_branch1") == d.w.b == 1.0
    # every branch ends at the pooled feature's width (64) and the last stage's size (4x4 at 16x16 input)
    z, f = d.branches[0](stage_out[0])
    assert f.shape == (4, 64) and z.shape == (4, NC)
    assert d.branches[0].bottleneck(stage_out[0]).shape[2:] == (4, 4)
    for h in hooks:
        h.remove()
    d.eval()
    with torch.no_grad():
        heads = d.eval_heads(x)
        assert list(heads) == ["student", "branch1", "branch2"]
        assert torch.allclose(heads["student"], d.student(x))


def test_byot_trainer_epoch_reports_every_branch(tmp_path):
    d = make("byot")
    trainer = trainer_for(d, [batch16(8, seed=i) for i in range(2)], tmp_path, epochs=1, test=eval_batches())
    stats = trainer.fit()["history"][0]
    assert {"top1_student", "top1_branch1", "top1_branch2", "loss_byot_feat_branch1"} <= set(stats)


# ----------------------------------------------------------------------------------------- MLKD
def test_rotations_are_counterclockwise_quarter_turns_in_blocks():
    img = np.array([[[[0.0, 1.0], [3.0, 4.0]]]], dtype=np.float32)
    x = torch.from_numpy(np.concatenate([img, img + 10], 0))  # two images
    r = rotations(x)
    assert r.shape == (8, 1, 2, 2)
    for k in range(4):
        for i in range(2):
            assert np.array_equal(r[2 * k + i, 0].numpy(), np.rot90(x[i, 0].numpy(), k))
    assert r[2, 0].tolist() == [[1.0, 4.0], [0.0, 3.0]]  # 90 degrees counterclockwise


def test_supcon_on_a_tiny_case_equals_the_explicit_sum():
    emb_s = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    emb_t = F.normalize(torch.tensor([[0.8, 0.6], [1.0, 1.0], [-1.0, 0.2]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    T = 0.5
    z = np.concatenate([np64(emb_s), np64(emb_t)])
    lab = [0, 0, 1, 0, 0, 1]
    per_anchor = []
    for i in range(6):
        denom = math.log(sum(math.exp(z[i] @ z[k] / T) for k in range(6) if k != i))
        pos = [j for j in range(6) if j != i and lab[j] == lab[i]]
        per_anchor.append(-np.mean([z[i] @ z[j] / T - denom for j in pos]))
    expect = float(np.mean(per_anchor))
    assert supcon_loss(emb_s, emb_t, labels, T=T, base_T=T).item() == pytest.approx(expect, rel=1e-5)
    # the default temperature ratio T / base_T is 1 at 0.07; a different base scales the loss
    assert supcon_loss(emb_s, emb_t, labels, T=T, base_T=2 * T).item() == pytest.approx(expect / 2, rel=1e-5)


def test_corr_and_align_equal_explicit_loops():
    g = torch.Generator().manual_seed(3)
    n = 2
    f_s, f_t = torch.randn(4 * n, 5, generator=g), torch.randn(4 * n, 5, generator=g)
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    s, t = np64(f_s), np64(f_t)
    sim_s = np.array([[cos(s[a], s[c]) for c in range(n)] for a in range(n, 4 * n)])
    sim_t = np.array([[cos(t[a], t[c]) for c in range(n)] for a in range(n, 4 * n)])
    expect = np_kl_rows(np_softmax(sim_t / 0.5), np_softmax(sim_s / 0.5)).sum() / (3 * n)
    assert corr_loss(f_s, f_t, n).item() == pytest.approx(expect, rel=1e-5)
    expect_align = 2 - 2 * np.mean([cos(s[i], t[i]) for i in range(4 * n)])
    assert align_loss(f_s, f_t).item() == pytest.approx(expect_align, rel=1e-5)


def test_mlkd_feeds_four_rotations_and_weights_its_terms_by_its_options():
    d = make("mlkd", mlkd_corr=2.0, mlkd_supcon=3.0, mlkd_align=5.0)
    assert get_distiller_class("mlkd").flip is None and (d.w.r, d.w.a, d.w.b) == (1.0, 0.0, 1.0)
    assert set(d.extra_modules()) == {"corr_mlp", "embed_s", "embed_t", "align_mlp"}
    s_in, t_in, s_out = [], [], []
    capture_inputs(d.student, s_in), capture_inputs(d.teacher, t_in), capture_outputs(d.student, s_out)
    x, y = batch16(3)
    d.freeze().train()
    losses = d((x, y))
    assert set(losses) == {"ce", "mlkd_corr", "mlkd_supcon", "mlkd_align"}
    assert torch.equal(s_in[0], rotations(x)) and torch.equal(t_in[0], rotations(x))
    assert losses["ce"].item() == pytest.approx(np_ce(np64(s_out[0][:3]), y), rel=1e-5)
    f_s, f_t = d.s_hooks.features["pool"], d.t_hooks.features["pool"]
    with torch.no_grad():
        corr = corr_loss(d.corr_mlp(f_s), f_t, 3)
        sup = supcon_loss(d.embed_s(f_s), d.embed_t(f_t), y.repeat(4))
        ali = align_loss(d.align_mlp(f_s), f_t)
    assert losses["mlkd_corr"].item() == pytest.approx(2.0 * corr.item(), rel=1e-4)
    assert losses["mlkd_supcon"].item() == pytest.approx(3.0 * sup.item(), rel=1e-4)
    assert losses["mlkd_align"].item() == pytest.approx(5.0 * ali.item(), rel=1e-4)


# -------------------------------------------------------------------------------------- triplet
def test_negatives_come_from_other_classes_and_the_hinge_matches_a_hand_case():
    labels = torch.tensor([0, 0, 1])
    for seed in range(5):
        torch.manual_seed(seed)
        idx, valid = pick_negatives(labels)
        assert idx[0] == 2 and idx[1] == 2 and idx[2] in (0, 1) and bool(valid.all())
    scores = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.1], [0.9, 0.2, 0.0]])  # anchor 2 picks sample 0
    assert pick_negatives(labels, scores)[0].tolist() == [2, 2, 0]
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    # anchor 0: d(s0,t0)=5, d(s0,t2)=0 -> max(0, 5 - 0 + 1) = 6
    # anchor 1: d(s1,t1)=1, d(s1,t2)=1 -> 1
    # anchor 2: d(s2,t2)=2, d(s2,t0)=sqrt(9+4) -> max(0, 2 - 3.6056 + 1) = 0
    expect = (6.0 + 1.0 + 0.0) / 3
    assert triplet_kd_loss(s, t, labels, 1.0, "teacher", scores=scores).item() == pytest.approx(expect, rel=1e-4)
    # student negatives: anchor 0 -> s2 (d=2): 5-2+1=4; anchor 1 -> s2 (sqrt 5): 1-2.2361+1=0; anchor 2 -> s0 (2): 1
    expect_s = (4.0 + 0.0 + 1.0) / 3
    assert triplet_kd_loss(s, t, labels, 1.0, "student", scores=scores).item() == pytest.approx(expect_s, rel=1e-4)


def test_triplet_hinge_skips_anchors_without_another_class():
    labels = torch.tensor([1, 1, 1])
    idx, valid = pick_negatives(labels)
    assert not bool(valid.any())
    x = torch.randn(3, 4)
    assert triplet_hinge(x, x + 1, x[idx], 5.0, valid).item() == 0.0


def test_triplet_needs_an_explicit_margin():
    with pytest.raises(ValueError, match="triplet_margin"):
        make("triplet")
    with pytest.raises(ValueError, match="triplet_negative"):
        make("triplet", triplet_margin=1.0, triplet_negative="random")
    d = make("triplet", triplet_margin=0.5)
    assert set(d(batch16())) == {"ce", "kd", "triplet"}


def test_triplet_kc_is_cosine_embedding_plus_kd_without_ce():
    d = make("triplet_kc", T=5.0)
    assert (d.w.r, d.w.a, d.w.b) == (0.0, 0.5, 0.5)
    s_out, t_out = [], []
    capture_outputs(d.student, s_out), capture_outputs(d.teacher, t_out)
    losses = d(batch16())
    assert set(losses) == {"kd", "triplet_cos"}
    s, t = np64(s_out[0]), np64(t_out[0])
    cos = [s[i] @ t[i] / (np.linalg.norm(s[i]) * np.linalg.norm(t[i])) for i in range(len(s))]
    assert losses["triplet_cos"].item() == pytest.approx(np.mean([1 - c for c in cos]), rel=1e-5)
    kl = np_kl_rows(np_softmax(t / 5.0), np_softmax(s / 5.0)).mean() * 25.0
    assert losses["kd"].item() == pytest.approx(kl, rel=1e-4)
    assert cosine_embedding(s_out[0], t_out[0]).item() == pytest.approx(losses["triplet_cos"].item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ UDA
class RecordingInvert(nn.Module):
    """A stand-in policy: records each uint8 group it gets and returns its negative image."""

    def __init__(self, invert: bool = True):
        super().__init__()
        self.invert, self.calls = invert, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.clone())
        return 255 - images if self.invert else images


def test_uda_augments_only_the_second_view_in_pixel_space():
    d = make("uda", weights=Weights(r=1.0, a=1.0))
    d.policy = RecordingInvert()
    s_in, t_in, s_out, t_out = [], [], [], []
    capture_inputs(d.student, s_in), capture_inputs(d.teacher, t_in)
    capture_outputs(d.student, s_out), capture_outputs(d.teacher, t_out)
    x, y = batch16(3)
    losses = d((x, y))
    assert set(losses) == {"ce", "kd", "ce_aug", "kd_aug"}
    mean, std = np.array(MEAN).reshape(1, 3, 1, 1), np.array(STD).reshape(1, 3, 1, 1)
    pixels = np.round(np.clip(np64(x) * std + mean, 0, 1) * 255)
    assert len(d.policy.calls) == 3  # one draw per image by default
    assert np.array_equal(torch.cat(d.policy.calls).numpy().astype(np.float64), pixels)
    expect_aug = ((255 - pixels) / 255 - mean) / std
    assert torch.equal(s_in[0], x) and torch.equal(t_in[0], x)  # the clean view is untouched
    assert np.allclose(np64(s_in[1]), expect_aug, atol=1e-5) and torch.equal(t_in[1], s_in[1])
    for suffix, k in (("", 0), ("_aug", 1)):
        s, t = np64(s_out[k]), np64(t_out[k])
        assert losses["ce" + suffix].item() == pytest.approx(0.5 * np_ce(s, y), rel=1e-5)
        kl = np_kl_rows(np_softmax(t / 4.0), np_softmax(s / 4.0)).mean() * 16.0
        assert losses["kd" + suffix].item() == pytest.approx(0.5 * kl, rel=1e-4)


def test_uda_identity_policy_round_trips_and_groups_share_a_call():
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (4, 3, 5, 5), generator=torch.Generator().manual_seed(0)).float()
    x = (pixels / 255 - mean) / std  # exactly on the 8-bit grid
    policy = RecordingInvert(invert=False)
    out = augment_batch(x, policy, mean, std, group=2)
    assert [c.shape[0] for c in policy.calls] == [2, 2] and policy.calls[0].dtype == torch.uint8
    assert torch.allclose(out, x, atol=1e-5)
    d = make("uda")
    assert (d.w.r, d.w.a) == (0.1, 0.9) and get_distiller_class("uda").weights_distiller.a == 0.5
    aug = d.augment(batch16(2)[0])  # the real AutoAugment policy runs on tensors
    assert aug.shape == (2, 3, 16, 16) and torch.isfinite(aug).all()


# --------------------------------------------------------------------------------- multiteacher
def test_multiteacher_averages_the_kd_over_teachers(tmp_path):
    torch.manual_seed(5)
    second = get_model("resnet14", num_classes=NC)
    path = tmp_path / "t2.pth"
    torch.save({"model": second.state_dict()}, path)
    d = make("multiteacher", weights=Weights(r=0.5, a=0.5), extra_teachers=(f"resnet14={path}",))
    d.freeze().train()
    extra = d.extra_teachers[0]
    assert extra in list(d.frozen_modules()) and not extra.training
    assert all(not p.requires_grad for p in extra.parameters())
    assert torch.equal(extra.conv1.weight, second.conv1.weight)
    s_out, t_out, t2_out = [], [], []
    capture_outputs(d.student, s_out), capture_outputs(d.teacher, t_out), capture_outputs(extra, t2_out)
    x, y = batch16()
    losses = d((x, y))
    s, t1, t2 = np64(s_out[0]), np64(t_out[0]), np64(t2_out[0])
    kl1 = np_kl_rows(np_softmax(t1 / 4), np_softmax(s / 4)).mean() * 16
    kl2 = np_kl_rows(np_softmax(t2 / 4), np_softmax(s / 4)).mean() * 16
    assert losses["kd"].item() == pytest.approx((kl1 + kl2) / 2, rel=1e-4)
    assert losses["ce"].item() == pytest.approx(np_ce(s, y), rel=1e-5)
    assert multi_teacher_kd(s_out[0], [t_out[0]], 4.0).item() == pytest.approx(kl1, rel=1e-4)


@pytest.mark.parametrize("spec,msg", [("resnet14", "ARCH=CHECKPOINT"), ("nonet=x.pth", "unknown model"),
                                      ("resnet14=/no/such/file.pth", "no checkpoint file")])
def test_multiteacher_checks_its_teacher_list(spec, msg):
    with pytest.raises(ValueError, match=msg):
        make("multiteacher", extra_teachers=(spec,))

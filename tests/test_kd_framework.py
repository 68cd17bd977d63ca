"""The distiller framework: registry, loss weighting, taps, the trainer's use of them, and the
generic 'every method trains' check over every registered distiller."""
import dataclasses

import pytest
import torch

from kdtools import build, run_steps, tiny_batch, tiny_info, tiny_pair, trainer_for
from kd.distillers import Distiller, Weights, get_distiller_class, list_distillers
from kd.distillers.base import tap_group
from kd.losses import kd_kl_div


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(KeyError) as e:
        get_distiller_class("fitnets-v9")
    msg = str(e.value)
    for name in ("kd", "attention", "nokd"):
        assert name in msg


def test_aliases_resolve_to_the_same_class():
    assert get_distiller_class("at") is get_distiller_class("attention")
    assert get_distiller_class("KD") is get_distiller_class("kd")


def test_weights_merge_and_route_by_name():
    d = build("attention", weights=Weights(a=0.5))
    assert (d.w.r, d.w.a, d.w.b) == (1.0, 0.5, 1000.0)  # r, b from AT's defaults, a from the command line
    assert d.loss_weight("ce") == 1.0 and d.loss_weight("kd") == 0.5 and d.loss_weight("at") == 1000.0
    assert d.loss_weight("ce_peer1") == 1.0 and d.loss_weight("kd_branch") == 0.5


def test_kd_losses_equal_the_formula_and_zero_weight_terms_are_skipped():
    t, s = tiny_pair()
    info = tiny_info()
    x, y = tiny_batch(info)
    d = build("kd", t, s, info, weights=Weights(r=0.1, a=0.9))
    losses = d((x, y))
    with torch.no_grad():
        st, tt = s(x), t(x)
    assert losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(st, y).item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(kd_kl_div(st, tt, 4.0).item(), rel=1e-5)
    d0 = build("kd", t, s, info, weights=Weights(r=0.0, a=1.0))
    assert set(d0((x, y))) == {"kd"}
    assert set(build("nokd", t, s, info)((x, y))) == {"ce"}


def test_tap_groups_follow_repdistiller_feature_lists():
    names = ["stem", "stage1", "stage2", "stage3", "preact1", "preact2", "preact3", "pool"]
    assert tap_group(names, "feat") == ["stem", "stage1", "stage2", "stage3", "pool"]  # feat[0..-1]
    assert tap_group(names, "stages") == ["stage1", "stage2", "stage3"]  # feat[1:-1]
    assert tap_group(names, "last_stage") == ["stage3"]  # feat[-2]
    assert tap_group(names, "preacts") == ["preact1", "preact2", "preact3"]
    with pytest.raises(KeyError):
        tap_group(names, "stage9")


def test_only_the_declared_taps_are_hooked_and_shapes_are_probed():
    d = build("attention")
    assert set(d.s_hooks.specs) == {"stage1", "stage2", "stage3"}
    assert d.s_shape("stages")[0][1:] == torch.Size([16, 32, 32])
    assert d.t_shape("stages")[-1][1:] == torch.Size([64, 8, 8])


def test_teacher_stays_frozen_in_eval_and_runs_without_grad():
    d = build("attention")
    d.freeze().train()
    assert not d.teacher.training and all(not p.requires_grad for p in d.teacher.parameters())
    x, y = tiny_batch(tiny_info())
    d((x, y))
    assert all(not f.requires_grad for f in d.t_hooks.features.values())
    assert all(f.requires_grad for f in d.s_hooks.features.values())


def test_trainer_weights_the_losses_and_logs_each(tmp_path):
    info = tiny_info()
    batches = [tiny_batch(info, seed=i) for i in range(3)]
    d = build("kd", weights=Weights(r=0.25, a=0.75))
    trainer = trainer_for(d, batches, tmp_path, epochs=1, lr=0.0)
    stats = trainer.train_one_epoch(0)
    assert stats["loss"] == pytest.approx(0.25 * stats["loss_ce"] + 0.75 * stats["loss_kd"], rel=1e-5)


# options without a reference default, which a user must set (the triplet margin)
REQUIRED_OPTIONS = {"triplet": {"triplet_margin": 1.0}}
# losses against a memory the step itself rewrites (CRD's bank): descent at a fixed memory is
# tested in tests/test_kd_losses_contrastive.py; here the loss must move
NONSTATIONARY = {"crd"}


def _all_methods():
    return list_distillers()


@pytest.mark.parametrize("method", _all_methods())
def test_every_method_trains_a_few_steps_and_its_loss_moves(method):
    cls = get_distiller_class(method)
    info = tiny_info()
    d = build(method, info=info, **REQUIRED_OPTIONS.get(method, {}))
    batch = tiny_batch(info, with_index=cls.needs_index)
    losses = d(batch)
    assert losses, f"{method} returned no losses"
    assert all(torch.isfinite(v).all() for v in losses.values())
    totals = run_steps(d, batch, steps=6)
    assert all(map(torch.isfinite, map(torch.tensor, totals)))
    if method in NONSTATIONARY:
        assert totals[-1] != totals[0], f"{method}: loss did not move"
    else:
        assert totals[-1] < totals[0], f"{method}: loss {totals[0]:.4f} -> {totals[-1]:.4f} did not go down"


@pytest.mark.parametrize("method", _all_methods())
def test_every_method_declares_valid_options_with_help(method):
    cls = get_distiller_class(method)
    assert issubclass(cls, Distiller)
    for f in dataclasses.fields(cls.Options):
        assert f.metadata.get("help"), f"{method}: option {f.name} has no help text"


def test_a_torchvision_model_is_a_teacher_unchanged_when_its_taps_are_named():
    import torchvision

    teacher = torchvision.models.resnet18(num_classes=10).eval()
    taps = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4", "pool": "fc:in"}
    _, student = tiny_pair()
    info = tiny_info()
    d = get_distiller_class("at")(student, teacher, info, t_taps=taps)
    assert d.t_shape("stages")[0][1:] == torch.Size([64, 8, 8])  # torchvision's stem downsamples 4x
    losses = d(tiny_batch(info))
    assert set(losses) == {"ce", "at"} and losses["at"] > 0
    with pytest.raises(ValueError, match="declares no feature_taps"):
        get_distiller_class("at")(student, teacher, info)


# torchvision's tensor equalize (inside AutoAugment) reads a value back per image and channel
READS_BACK = {"uda"}


@pytest.mark.parametrize("method", [m for m in _all_methods() if m not in READS_BACK])
def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch, method):
    from test_speed_paths import count_readbacks

    cls = get_distiller_class(method)
    info = tiny_info()
    d = build(method, info=info, **REQUIRED_OPTIONS.get(method, {}))
    d.freeze().train()
    batch = tiny_batch(info, with_index=cls.needs_index)
    d(batch)  # first call may set up lazily

    def step():
        losses = d(batch)
        sum(v * d.loss_weight(k) for k, v in losses.items()).backward()

    assert count_readbacks(monkeypatch, step) == 0

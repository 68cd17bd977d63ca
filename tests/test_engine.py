"""Trainer, checkpoints and weight loading on a tiny CNN and the offline digits set."""
import math
import os

import pytest
import torch
import torch.nn as nn

from engine.checkpoint import CheckpointMismatchError, load_checkpoint, load_weights, save_checkpoint
from engine.data import TensorLoader
from engine.objective import CrossEntropyObjective, Objective
from engine.trainer import DivergenceError, TrainConfig, Trainer, evaluate
from engine.utils import seed_everything
from registry.datasets import TensorSplit, dataset_spec, get_dataset


class TinyNet(nn.Module):
    def __init__(self, in_chans=1, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(x.flatten(1))


def small_digits(n=640):
    tr = get_dataset("digits", "train")
    te = get_dataset("digits", "test")
    return TensorSplit(tr.images[:n], tr.labels[:n], tr.spec), te


def make_trainer(tmp_path, epochs=3, seed=0, lr=0.01, schedule="multistep", **cfg_kw):
    seed_everything(seed)
    tr, te = small_digits()
    dev = torch.device("cpu")
    model = TinyNet()
    cfg = TrainConfig(epochs=epochs, lr=lr, schedule=schedule, milestones=(1, 2), save_dir=str(tmp_path),
                      progress=False, log_every=2, **cfg_kw)
    return Trainer(CrossEntropyObjective(model), TensorLoader(tr, 32, True, dev, seed=seed),
                   TensorLoader(te, 128, False, dev), cfg, dev)


def test_training_improves_and_writes_outputs(tmp_path):
    t = make_trainer(tmp_path, epochs=3)
    before = evaluate(t.objective.student, t.test_loader, t.device)["top1"]
    m = t.fit()
    assert m["last_top1"] > before + 20
    assert m["best_top1"] >= m["last_top1"]
    for f in ("last.pt", "best.pt", "metrics.json"):
        assert os.path.exists(tmp_path / f)
    assert len(m["history"]) == 3 and m["status"] == "finished"
    # milestones (1, 2): decayed from 0-indexed epoch 1 on, as RepDistiller decays after epoch 150 (1-indexed)
    assert [round(h["lr"], 7) for h in m["history"]] == [0.01, 0.001, 0.0001]


def test_resumed_run_equals_uninterrupted(tmp_path):
    a = make_trainer(tmp_path / "a", epochs=3)
    a.fit()
    b = make_trainer(tmp_path / "b", epochs=3)
    b.fit(until_epoch=1)  # "interrupted" after one epoch
    # a fresh process: new objects with a different seed, state comes only from last.pt
    c = make_trainer(tmp_path / "b", epochs=3, seed=123)
    c.resume(str(tmp_path / "b" / "last.pt"))
    assert c.start_epoch == 1
    c.fit()
    sa, sc = a.objective.student.state_dict(), c.objective.student.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert c.history[-1]["top1"] == a.history[-1]["top1"]
    assert c.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]


def test_checkpoint_round_trip(tmp_path):
    t = make_trainer(tmp_path, epochs=1)
    t.fit()
    ck = load_checkpoint(str(tmp_path / "last.pt"))
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "rng", "args", "history", "source"):
        assert key in ck
    fresh = TinyNet()
    load_weights(fresh, str(tmp_path / "last.pt"))
    for k, v in t.objective.student.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    # no temporary files left behind by the atomic writes
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "model_state_dict", "net", "module_prefix"])
def test_accepted_checkpoint_layouts(tmp_path, layout):
    src = TinyNet()
    sd = src.state_dict()
    if layout == "bare":
        obj = sd
    elif layout == "module_prefix":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    else:
        obj = {layout: sd, "epoch": 3}
    path = str(tmp_path / "w.pth")
    torch.save(obj, path)
    dst = TinyNet()
    load_weights(dst, path)
    for k, v in sd.items():
        assert torch.equal(dst.state_dict()[k], v)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    sd = TinyNet(num_classes=5).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["bn.running_var"]
    path = str(tmp_path / "bad.pth")
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointMismatchError) as e:
        load_weights(TinyNet(num_classes=10), path)
    msg = str(e.value)
    assert "bn.running_var" in msg and "extra.weight" in msg
    assert "fc.weight" in msg and "(10, 1024)" in msg and "(5, 1024)" in msg
    assert "fc.bias" in e.value.shapes and "bn.running_var" in e.value.missing


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"x": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.pt"]


class ExplodingObjective(Objective):
    """Cross-entropy until ``after`` steps, then a NaN loss."""

    def __init__(self, model, after):
        super().__init__(model)
        self.after, self.calls = after, 0

    def forward(self, batch):
        self.calls += 1
        loss = nn.functional.cross_entropy(self.student(batch[0]), batch[1])
        return {"ce": loss * (math.nan if self.calls > self.after else 1.0)}


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    seed_everything(0)
    tr, te = small_digits()
    dev = torch.device("cpu")
    steps_per_epoch = len(TensorLoader(tr, 32, True, dev))
    obj = ExplodingObjective(TinyNet(), after=steps_per_epoch + 3)  # NaN during epoch 2
    cfg = TrainConfig(epochs=3, lr=0.1, save_dir=str(tmp_path), progress=False, log_every=2)
    t = Trainer(obj, TensorLoader(tr, 32, True, dev), TensorLoader(te, 128, False, dev), cfg, dev)
    with pytest.raises(DivergenceError, match="last.pt"):
        t.fit()
    ck = load_checkpoint(str(tmp_path / "last.pt"))
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


class SVDObjective(ExplodingObjective):
    """A NaN loss after ``after`` steps (which makes the weights NaN), then an SVD of the
    features: the SVD raises LinAlgError on non-finite input, as KDSVD's would."""

    def forward(self, batch):
        losses = super().forward(batch)
        if self.calls > self.after + 1:
            torch.linalg.svd(self.student.conv.weight.flatten(1))
        return losses


def test_an_svd_of_diverged_weights_stops_as_divergence_not_a_traceback(tmp_path):
    seed_everything(0)
    tr, te = small_digits()
    dev = torch.device("cpu")
    cfg = TrainConfig(epochs=2, lr=0.1, save_dir=str(tmp_path), progress=False, log_every=1000)
    t = Trainer(SVDObjective(TinyNet(), after=2), TensorLoader(tr, 32, True, dev), None, cfg, dev)
    with pytest.raises(DivergenceError, match="no longer finite"):
        t.fit()


def test_cosine_schedule_starts_after_sched_start(tmp_path):
    t = make_trainer(tmp_path, epochs=4, schedule="cosine", sched_start_epoch=2)
    m = t.fit()
    lrs = [h["lr"] for h in m["history"]]
    assert lrs[0] == lrs[1] == lrs[2] == pytest.approx(0.01)  # no steps before epoch 2
    assert lrs[3] == pytest.approx(0.005)  # half-way through a 2-epoch cosine


def test_digits_split_is_reproducible_and_disjoint():
    import registry.datasets as rd

    a = get_dataset("digits", "train")
    rd._TENSOR_CACHE.clear()  # decode again: the split itself must be reproducible, not just cached
    b = get_dataset("digits", "train")
    assert a is not b and get_dataset("digits", "train") is b  # and a second call is served from the cache
    te = get_dataset("digits", "test")
    assert torch.equal(a.images, b.images) and len(a) + len(te) == 1797
    assert a.images.shape[1:] == (1, 32, 32) and a.images.dtype == torch.uint8
    spec = dataset_spec("digits")
    x = a.images.float() / 255
    assert x.mean().item() == pytest.approx(spec.mean[0], abs=1e-3)
    assert x.std().item() == pytest.approx(spec.std[0], abs=1e-3)
    # every class is in both splits
    assert set(te.labels.tolist()) == set(range(10))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError, match="cifar100"):
        dataset_spec("cifar1000")

"""kd/train.py run-level modes: allkd (teacher sweep), multikd (ensemble of students), kdparam
(T x alpha grid). Offline digits, 1 epoch of 2 steps per stage, LeNet-5-half-BN students."""
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

from engine.checkpoint import load_weights
from engine.data import build_loader
from kd import train as kdtrain
from kdtools import digits_teacher_ckpt, kd_cli
from registry.models import get_model

FAST = ("--steps_per_epoch", "2", "--batch_size", "32")  # after kd_cli's --batch_size 128: wins


def digits_test_logits(model) -> tuple:
    """Every digits test image's logits (numpy) and its label, read with a plain loop."""
    loader = build_loader("digits", "test", 128, torch.device("cpu"), "./data/torchdata", download=False)
    model.eval()
    zs, ys = [], []
    with torch.no_grad():
        for x, y in loader:
            zs.append(model(x).numpy())
            ys.append(y.numpy())
    return np.concatenate(zs), np.concatenate(ys)


def percent_correct(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.sum(np.argmax(logits, axis=1) == labels)) / len(labels)


def saved(arch: str, path: str) -> torch.nn.Module:
    return load_weights(get_model(arch, num_classes=10, in_chans=1), str(path))


def test_allkd_sweeps_teachers_given_by_checkpoints_and_marks_the_best(tmp_path):
    folder = tmp_path / "ckpts"
    digits_teacher_ckpt(folder, arch="resnet8", layout="plain")  # found by the <arch>.pth layout
    torch.manual_seed(3)
    r14 = get_model("resnet14", num_classes=10, in_chans=1)
    r14_path = tmp_path / "elsewhere" / "r14.pt"
    os.makedirs(r14_path.parent)
    torch.save({"state_dict": r14.state_dict()}, r14_path)
    out = tmp_path / "allkd"
    summary = kdtrain.run(kd_cli(out, *FAST, "--distill", "allkd", "--allkd_teachers", "resnet8", "resnet14",
                                 "--allkd_ckpts", str(folder), f"resnet14={r14_path}"))
    rows = summary["rows"]
    assert [r["teacher"] for r in rows] == ["resnet8", "resnet14"]
    assert [r["teacher_trained"] for r in rows] == [False, False]
    assert rows[0]["teacher_ckpt"] == str(folder / "resnet8.pth") and rows[1]["teacher_ckpt"] == str(r14_path)
    assert all(0.0 <= r["teacher_top1"] <= 100.0 for r in rows)
    assert sum(r["best"] for r in rows) == 1
    best = next(r for r in rows if r["best"])
    assert best["best_top1"] == max(r["best_top1"] for r in rows) and best["stage"].endswith("(best)")
    for t in ("resnet8", "resnet14"):
        assert os.path.isfile(out / t / "last.pt") and not os.path.exists(out / t / "teacher")
        assert json.loads((out / t / "metrics.json").read_text())["args"]["method"] == "kd"
    table = (out / "results.md").read_text()
    assert table.count("| allkd |") == 2 and "teacher resnet8" in table and "teacher resnet14" in table
    assert table.count("(best) |") == 1  # one row of the table


def test_allkd_trains_a_teacher_without_checkpoint_then_distils(tmp_path):
    empty = tmp_path / "no_ckpts"
    empty.mkdir()
    out = tmp_path / "allkd"
    rows = kdtrain.run(kd_cli(out, *FAST, "--distill", "allkd", "--allkd_teachers", "resnet8",
                              "--allkd_ckpts", str(empty)))["rows"]
    assert len(rows) == 1 and rows[0]["teacher_trained"] is True
    t_dir = out / "resnet8" / "teacher"
    assert rows[0]["teacher_ckpt"] == str(t_dir / "best.pt")
    t_metrics = json.loads((t_dir / "metrics.json").read_text())
    assert t_metrics["epochs"] == 1 and t_metrics["args"]["stage"] == "teacher"
    # the reported teacher accuracy is that of the teacher's saved best epoch
    assert rows[0]["teacher_top1"] == pytest.approx(t_metrics["best_top1"], abs=1e-9)
    assert os.path.isfile(out / "resnet8" / "last.pt") and rows[0]["epochs"] == 1


def test_allkd_unknown_teacher_or_missing_checkpoint_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    assert kdtrain.main(kd_cli(out, "--distill", "allkd", "--allkd_teachers", "resnet8", "resnet9000")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet9000" in err[0] and "Valid names" in err[0] and "resnet14" in err[0]
    missing = tmp_path / "nope.pth"
    assert kdtrain.main(kd_cli(out, "--distill", "allkd", "--allkd_teachers", "resnet8",
                               "--allkd_ckpts", f"resnet8={missing}")) == 2
    assert str(missing) in capsys.readouterr().err
    assert not out.exists()


def test_allkd_checkpoint_layouts_and_spellings(tmp_path):
    from kd.modes.allkd import find_checkpoint

    for rel in ("a/digits_resnet8/best.pt", "a/resnet8.pth", "b/digits_resnet20.pth",
                "b/resnet56_vanilla/ckpt_epoch_240.pth", "b/resnet26.pth"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert find_checkpoint(["resnet8"], "digits", folders) == str(tmp_path / "a/digits_resnet8/best.pt")  # first
    assert find_checkpoint(["resnet20"], "digits", folders) == str(tmp_path / "b/digits_resnet20.pth")
    assert find_checkpoint(["resnet56"], "digits", folders) == str(tmp_path / "b/resnet56_vanilla/ckpt_epoch_240.pth")
    assert find_checkpoint(["resnet26", "kc_resnet26"], "digits", folders) == str(tmp_path / "b/resnet26.pth")
    assert find_checkpoint(["resnet56"], "cifar10", [folders[0]]) is None


def test_multikd_reports_each_student_and_their_logit_mean_ensemble(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path, arch="lenet5", layout="plain")  # a cheap teacher
    out = tmp_path / "multikd"
    rows = kdtrain.run(kd_cli(out, *FAST, "--distill", "multikd", "--teacher", "lenet5",
                              "--t_model_path", ckpt))["rows"]
    assert [r["stage"] for r in rows] == ["student 1 (seed 0)", "student 2 (seed 1)", "ensemble"]
    members = [saved("lenet5_half_bn", out / f"student{i}" / "last.pt") for i in (1, 2)]
    w1, w2 = (next(m.parameters()) for m in members)
    assert not torch.equal(w1, w2)  # different seeds, different students
    (z1, y), (z2, _) = (digits_test_logits(m) for m in members)
    for row, z in zip(rows, (z1, z2)):
        assert row["last_top1"] == pytest.approx(percent_correct(z, y), abs=1e-9)
    ensemble = percent_correct((z1 + z2) / 2.0, y)
    assert rows[2]["last_top1"] == pytest.approx(ensemble, abs=1e-9)
    assert rows[2]["best_top1"] == pytest.approx(ensemble, abs=1e-9)  # one epoch: best.pt is last.pt
    assert rows[2]["ensemble"] is True and rows[2]["student"] == "2 x lenet5_half_bn"


def test_kdparam_runs_every_cell_with_its_own_temperature_and_weights(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path, arch="lenet5", layout="plain")
    out = tmp_path / "kdparam"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = kdtrain.run(kd_cli(out, *FAST, "--distill", "kdparam", "--teacher", "lenet5", "--t_model_path",
                                     ckpt, "--kdparam_T", "1", "4", "--kdparam_alpha", "0.5", "1.0",
                                     "-a", "0.9", "--kd_T", "3"))  # the grid overrides these (warned)
    assert any("kdparam: flag -a" in str(w.message) for w in caught)
    assert any("kdparam: flag --kd_T" in str(w.message) for w in caught)
    rows = summary["rows"]
    cells = [(1.0, 0.5), (1.0, 1.0), (4.0, 0.5), (4.0, 1.0)]
    assert [(r["T"], r["alpha"]) for r in rows] == cells
    assert all(r["method"] == "kdparam" for r in rows) and sum(r["best"] for r in rows) == 1
    log = (out / "log.txt").read_text()
    for (T, alpha), folder in zip(cells, ("T1_a0.5", "T1_a1", "T4_a0.5", "T4_a1")):
        args = json.loads((out / folder / "metrics.json").read_text())["args"]
        assert (args["kd_T"], args["a"], args["r"], args["b"]) == (T, alpha, 1.0 - alpha, 0.0)
        # the distiller that trained the cell describes its own weights and temperature
        line = f"kdparam {cells.index((T, alpha)) + 1}/4 T {T:g} alpha {alpha:g}: kd: -r {1 - alpha:g} -a {alpha:g}"
        found = re.search(re.escape(line) + r" -b 0, kd_T (\S+)", log)
        assert found is not None and float(found.group(1)) == T
    table = (out / "results.md").read_text()
    assert table.count("| kdparam |") == 4 and table.count("(best) |") == 1 and "T 4, alpha 0.5" in table

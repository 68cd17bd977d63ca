"""Teacher training end to end through ``cifar100.py`` on real offline data."""
import json
import os

import pytest

import cifar100
from engine.checkpoint import load_weights
from registry.models import get_model


def test_lenet5_on_mnist_two_epochs_reaches_98(tmp_path, shared_data):
    m = cifar100.train(["--model", "lenet5", "--dataset", "mnist", "--epochs", "2", "--lr", "0.02",
                        "--schedule", "cosine", "--data_root", shared_data, "--no_download",
                        "--save_dir", str(tmp_path), "--no_progress"])
    assert m["last_top1"] >= 98.0, m["last_top1"]
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["last_top1"] == m["last_top1"] and len(saved["history"]) == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


def test_quick_teacher_reaches_95_on_digits(tmp_path):
    m = cifar100.train(["--quick", "--save_dir", str(tmp_path), "--no_progress"])
    assert m["last_top1"] >= 95.0, m["last_top1"]
    # best.pt is a usable teacher checkpoint for the registered architecture
    model = get_model(cifar100.QUICK["model"], num_classes=10, in_chans=1)
    load_weights(model, str(tmp_path / "best.pt"))
    ev = cifar100.train(["--quick", "--save_dir", str(tmp_path), "--evaluate_only", "--no_progress"])
    assert ev["top1"] == pytest.approx(m["best_top1"])


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    rc = cifar100.main(["--model", "wrn40_3", "--dataset", "digits", "--save_dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown model 'wrn40_3'" in err and "wrn40_2" in err

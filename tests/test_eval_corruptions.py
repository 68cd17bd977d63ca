"""CIFAR-C evaluation (kd/eval_corruptions.py) on a tiny fake CIFAR-100-C folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import kd.eval_corruptions as ec
from engine.data import TensorLoader
from registry.datasets import TensorSplit, dataset_spec
from registry.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 8  # images per severity
SPEC = dataset_spec("cifar100")
PINNED = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
          "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model():
    torch.manual_seed(0)
    return get_model("resnet8", num_classes=100, in_chans=3).eval()


def predict(model, images_u8: np.ndarray) -> np.ndarray:
    """Class predictions for N x 32 x 32 x 3 uint8 images, normalised here with numpy."""
    x = (images_u8.astype(np.float64) / 255.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).argmax(1).numpy()


@pytest.fixture
def fake_c(tmp_path):
    """(folder parent, checkpoint path, model, images by corruption, labels) of a fake CIFAR-100-C
    whose labels are the model's own predictions on gaussian_noise for half the images (so the
    accuracies differ between corruptions and severities and are not all ~1%)."""
    model = tiny_model()
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "CIFAR-100-C"
    folder.mkdir(parents=True)
    images = {}
    for k, c in enumerate(PINNED):
        base = rng.integers(0, 256, (1, 32, 32, 3))
        noise = rng.integers(-40 - 10 * k, 40 + 10 * k, (5 * N, 32, 32, 3))
        images[c] = np.clip(base + noise, 0, 255).astype(np.uint8)
        np.save(folder / f"{c}.npy", images[c])
    labels = rng.integers(0, 100, 5 * N)
    pred = predict(model, images["gaussian_noise"])
    labels[::2] = pred[::2]
    np.save(folder / "labels.npy", labels)
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"model": model.state_dict(), "args": {"model": "resnet8", "dataset": "cifar100"}}, ckpt)
    return tmp_path / "data", ckpt, model, images, labels


def test_accuracies_match_a_direct_computation_and_the_json(fake_c, tmp_path, capsys):
    root, ckpt, model, images, labels = fake_c
    out = tmp_path / "report.json"
    report = ec.run(["--ckpt", str(ckpt), "--data_root", str(root), "--device", "cpu", "--batch_size", "5",
                     "--json", str(out)])
    assert report["model"] == "resnet8" and report["model_source"] == "checkpoint args"
    assert report["images_per_severity"] == N and report["corruption_list"] == PINNED
    per_corruption = []
    for c in PINNED:
        pred = predict(model, images[c])
        sev = [100.0 * np.mean(pred[s * N:(s + 1) * N] == labels[s * N:(s + 1) * N]) for s in range(5)]
        got = report["corruptions"][c]
        np.testing.assert_allclose(got["severities"], sev, atol=1e-9)
        assert got["top1"] == pytest.approx(100.0 * np.mean(pred == labels))
        assert got["error"] == pytest.approx(100.0 - got["top1"])
        per_corruption.append(got["top1"])
    assert report["corruptions"]["gaussian_noise"]["top1"] >= 50.0  # half the labels are its predictions
    assert len(set(per_corruption)) > 1
    assert report["mean_corruption_error"] == pytest.approx(100.0 - np.mean(per_corruption))
    assert report["mean_corruption_accuracy"] == pytest.approx(np.mean(per_corruption))
    assert report["clean"] is None and "pass --clean_root" in report["clean_note"]
    saved = json.load(open(out))
    assert saved["corruptions"] == report["corruptions"]
    assert saved["mean_corruption_error"] == report["mean_corruption_error"]
    assert saved["normalization"] == {"mean": list(SPEC.mean), "std": list(SPEC.std)}
    text = capsys.readouterr().out
    assert "clean: unavailable" in text and "mean corruption error (15 corruptions)" in text
    assert f"{report['mean_corruption_error']:.2f}" in text and "jpeg_compression" in text


def test_the_folder_itself_works_and_the_default_json_goes_beside_the_checkpoint(fake_c):
    root, ckpt, *_ = fake_c
    report = ec.run(["--ckpt", str(ckpt), "--data_root", str(root / "CIFAR-100-C"), "--device", "cpu"])
    path = ckpt.parent / "corruptions_cifar100.json"
    assert path.exists() and json.load(open(path))["mean_corruption_error"] == report["mean_corruption_error"]


def test_clean_accuracy_is_evaluated_first_through_build_loader(fake_c, monkeypatch, tmp_path):
    root, ckpt, model, *_ = fake_c
    rng = np.random.default_rng(3)
    clean_u8 = rng.integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    clean_labels = predict(model, clean_u8)
    clean_labels[:7] = (clean_labels[:7] + 1) % 100  # 13 of 20 right
    seen = []

    def fake_build_loader(name, split, batch_size, device, data_root, download=True, **kw):
        seen.append((name, split, data_root, download))
        split_ = TensorSplit(torch.from_numpy(clean_u8).permute(0, 3, 1, 2).contiguous(),
                             torch.from_numpy(clean_labels), SPEC)
        return TensorLoader(split_, batch_size, train=False, device=device)

    order = []
    real_evaluate = ec.evaluate

    def recording_evaluate(model_, loader, device):
        order.append(type(loader).__name__)
        return real_evaluate(model_, loader, device)

    monkeypatch.setattr(ec, "build_loader", fake_build_loader)
    monkeypatch.setattr(ec, "evaluate", recording_evaluate)
    report = ec.run(["--ckpt", str(ckpt), "--data_root", str(root), "--clean_root", str(tmp_path / "clean"),
                     "--device", "cpu", "--json", str(tmp_path / "r.json")])
    assert seen == [("cifar100", "test", str(tmp_path / "clean"), False)]
    assert report["clean"]["top1"] == pytest.approx(65.0)
    assert order[0] == "TensorLoader" and order[1:] == ["ArrayBatches"] * 75


def test_a_required_clean_root_that_is_missing_fails_in_one_line(fake_c, tmp_path, capsys):
    root, ckpt, *_ = fake_c
    rc = ec.main(["--ckpt", str(ckpt), "--data_root", str(root), "--clean_root", str(tmp_path / "nowhere"),
                  "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--clean_root" in err[0] and "nowhere" in err[0]


@pytest.mark.parametrize("victim", ["frost.npy", "labels.npy"])
def test_a_missing_file_fails_before_any_evaluation(fake_c, monkeypatch, capsys, victim):
    root, ckpt, *_ = fake_c
    os.remove(root / "CIFAR-100-C" / victim)
    called = []
    monkeypatch.setattr(ec, "evaluate", lambda *a, **k: called.append("evaluate"))
    monkeypatch.setattr(ec, "build_loader", lambda *a, **k: called.append("build_loader"))
    rc = ec.main(["--ckpt", str(ckpt), "--data_root", str(root), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and called == []
    assert len(err) == 1 and victim in err[0] and "CIFAR-100-C" in err[0], err
    other = "gaussian_noise.npy" if victim == "labels.npy" else "labels.npy"
    assert other not in err[0]


def test_a_file_of_the_wrong_shape_fails_in_one_line(fake_c, capsys):
    root, ckpt, *_ = fake_c
    np.save(root / "CIFAR-100-C" / "fog.npy", np.zeros((5 * N, 32, 32), np.uint8))
    rc = ec.main(["--ckpt", str(ckpt), "--data_root", str(root), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fog.npy" in err[0] and "(40, 32, 32, 3)" in err[0]


def test_a_missing_checkpoint_fails_in_one_line(fake_c, tmp_path, capsys):
    root, *_ = fake_c
    rc = ec.main(["--ckpt", str(tmp_path / "none.pt"), "--data_root", str(root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "none.pt" in err[0]


def test_architecture_from_repdistiller_paths(fake_c, tmp_path):
    root, _, model, *_ = fake_c
    teacher = tmp_path / "save" / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    student = tmp_path / "save" / "student_model" / "S:resnet8_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_1" / \
        "ckpt_epoch_10.pth"
    for path in (teacher, student):
        path.parent.mkdir(parents=True)
        torch.save({"epoch": 240, "model": model.state_dict()}, path)  # RepDistiller layout: no args
        report = ec.run(["--ckpt", str(path), "--data_root", str(root), "--device", "cpu",
                         "--json", str(tmp_path / "r.json")])
        assert report["model"] == "resnet8" and report["model_source"] == "checkpoint path"
    assert ec.arch_from_path("x/wrn_40_2_vanilla/ckpt_epoch_240.pth") == "wrn40_2"
    assert ec.arch_from_path("x/run/resnet8x4_best.pth") == "resnet8x4"
    assert ec.arch_from_path("x/run/best.pt") is None
    assert ec.arch_from_args({"student": "resnet8", "teacher": "resnet32x4"}) == "resnet8"
    assert ec.arch_from_args({"student": "resnet8", "model": "wrn40_2", "stage": "teacher"}) == "wrn40_2"


def test_an_unknown_architecture_asks_for_model(fake_c, tmp_path, capsys):
    root, _, model, *_ = fake_c
    path = tmp_path / "weights" / "w.pt"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    rc = ec.main(["--ckpt", str(path), "--data_root", str(root), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--model" in err[0]


def test_script_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "kd", "eval_corruptions.py"), "--ckpt",
                           str(tmp_path / "missing.pt"), "--data_root", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no checkpoint at {tmp_path / 'missing.pt'}"

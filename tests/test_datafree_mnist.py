"""fast_meta end to end on real MNIST: a LeNet-5-BN teacher trained from ../shared/data, a
half-width student distilled without data, judged on the real MNIST test set."""
import json

import cifar100
from kd import faster_data_free_kd as dfkd

STUDENT_MIN_TOP1 = 90.0  # stated bound; measured 93.9 with these settings (seed 0, 2 CPU cores)


def test_fast_meta_student_from_mnist_teacher(tmp_path, shared_data):
    t = cifar100.train(["--model", "lenet5_bn", "--dataset", "mnist", "--epochs", "1", "--lr", "0.05",
                        "--schedule", "cosine", "--data_root", shared_data, "--no_download",
                        "--save_dir", str(tmp_path / "teacher"), "--no_progress"])
    assert t["last_top1"] >= 97.0
    m = dfkd.run(["--method", "fast_meta", "--teacher", "lenet5_bn", "--student", "lenet5_half_bn",
                  "--dataset", "mnist", "--data_root", shared_data, "--no_download",
                  "--teacher_ckpt", str(tmp_path / "teacher" / "best.pt"), "--no_progress",
                  "--lr", "0.1", "--T", "20", "--bn", "10", "--oh", "0.5", "--adv", "1.0", "--bn_mmt", "0.9",
                  "--lr_g", "3e-3", "--lr_z", "0.01", "--g_steps", "5", "--warmup", "1", "--ngf", "32",
                  "--synthesis_batch_size", "128", "--batch_size", "128", "--kd_steps", "20", "--ep_steps", "40",
                  "--epochs", "6", "--save_dir", str(tmp_path / "student")])
    assert m["last_top1"] >= STUDENT_MIN_TOP1, m["last_top1"]
    saved = json.load(open(tmp_path / "student" / "metrics.json"))
    assert saved["teacher_top1"] == t["best_top1"]
    assert 0 < saved["time_synthesis"] < saved["time_total"]
    assert saved["history"][0]["steps"] == 0 and saved["history"][1]["steps"] == 40  # warm-up, then KD
    assert (tmp_path / "student" / "images" / "epoch0006.png").exists()

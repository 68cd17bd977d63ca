"""kd/train.py: the seeds' command lines, validation before side effects, outputs."""
import json
import os
import warnings


from kdtools import digits_teacher_ckpt, kd_cli
from kd import train as kdtrain


def test_repdistiller_command_line_infers_the_teacher_and_writes_every_output(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path / "save" / "models")
    out = tmp_path / "run"
    summary = kdtrain.run(kd_cli(out, "--path_t", ckpt, "--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0",
                                 "--trial", "1", "--kd_T", "4"))
    row = summary["rows"][0]
    assert row["teacher"] == "resnet8" and row["method"] == "kd"
    for name in ("last.pt", "best.pt", "log.txt", "metrics.json", "results.md", "results.json"):
        assert os.path.isfile(out / name), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["recipe"] == "crd" and metrics["args"]["kd_T"] == 4.0


def test_unknown_method_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert kdtrain.main(kd_cli(out, "--distill", "fitnetz")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Valid methods" in err[0] and "attention" in err[0]
    assert not out.exists()


def test_teacher_checkpoint_that_does_not_fit_names_the_keys(tmp_path, capsys):
    ckpt = digits_teacher_ckpt(tmp_path, arch="resnet8")
    out = tmp_path / "never"
    assert kdtrain.main(kd_cli(out, "--teacher", "resnet14", "--t_model_path", ckpt)) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "layer1.1" in err
    assert not out.exists()


def test_flags_the_method_does_not_use_are_named(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path / "m")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = kdtrain.parse_args(kd_cli(tmp_path / "o", "--path_t", ckpt, "--distill", "nokd", "-a", "0.9",
                                         "--at_p", "3"))
        named = kdtrain.warn_unused(args, "nokd")
    assert any("-a" in n for n in named) and any("--at_p" in n for n in named)
    assert any("--at_p" in str(w.message) for w in caught)


def test_distiller_mode_list_runs_each_and_writes_one_table(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path, arch="kc_resnet8", layout="plain")
    out = tmp_path / "kc"
    summary = kdtrain.run(kd_cli(out, "--teacher", "resnet8", "--teacher-checkpoint", ckpt,
                                 "--mode", "nokd", "KD", "--learning-rate", "0.05"))
    assert [r["method"] for r in summary["rows"]] == ["nokd", "kd"]
    assert summary["rows"][1]["teacher"] == "kc_resnet8"  # Distiller's resnet8, not RepDistiller's
    assert summary["args"]["recipe"] == "distiller" and summary["args"]["kd_T"] == 5.0
    table = (out / "results.md").read_text()
    assert "nokd" in table and "| kd |" in table
    for m in ("nokd", "kd"):
        assert os.path.isfile(out / m / "last.pt")


def test_takd_chain_trains_the_assistant_then_the_student(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path, arch="resnet14", layout="plain")
    out = tmp_path / "takd"
    summary = kdtrain.run(kd_cli(out, "--teacher", "resnet14", "--t_model_path", ckpt, "--distill", "takd",
                                 "--ta_model", "resnet8"))
    stages = [r["stage"] for r in summary["rows"]]
    assert stages[0].startswith("assistant resnet8") and stages[-1].startswith("student")
    assert os.path.isfile(out / "assistant1_resnet8" / "last.pt") and os.path.isfile(out / "last.pt")


def test_resume_skips_a_finished_run_and_continues_a_longer_one(tmp_path):
    ckpt = digits_teacher_ckpt(tmp_path)
    out = tmp_path / "r"
    kdtrain.run(kd_cli(out, "--path_t", ckpt, "--distill", "kd"))
    summary = kdtrain.run(kd_cli(out, "--path_t", ckpt, "--distill", "kd", "--resume", "--epochs", "2"))
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert summary["rows"][0]["epochs"] == 2

"""Runs that survive faults (issue 11, item 3): a kill at any moment, a corrupt or half-written
checkpoint, a full disk, and a synthesis that diverges."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.checkpoint import (CheckpointError, load_checkpoint, load_resume, previous_path, remove_orphans,
                               save_checkpoint)
from engine.trainer import DivergenceError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- checkpoint files
def test_a_save_keeps_the_previous_checkpoint_and_a_corrupt_last_falls_back_on_it(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, path, keep_previous=True)
    assert not os.path.exists(previous_path(path))  # nothing to keep yet
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path, keep_previous=True)
    assert load_checkpoint(previous_path(path))["epoch"] == 0 and load_checkpoint(path)["epoch"] == 1
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # truncated, as a crash of the storage could leave it
        f.write(data[: len(data) // 2])
    logged = []
    ckpt, used = load_resume(path, log=logged.append)
    assert ckpt["epoch"] == 0 and used == previous_path(path)
    assert len(logged) == 1 and "resuming from the previous checkpoint" in logged[0] and "(epoch 1)" in logged[0]
    os.unlink(previous_path(path))
    with pytest.raises(CheckpointError, match="no previous checkpoint"):
        load_resume(path)


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_intact_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, path, keep_previous=True)
    before = open(path, "rb").read()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path, keep_previous=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file, no half-made previous


def test_a_kill_during_a_save_leaves_no_orphan_on_the_next_start(tmp_path):
    """A SIGKILL between the temporary file's creation and its rename leaves ``.tmp-*``; the
    next start of the run (``--resume``) removes it and says so."""
    from kd import faster_data_free_kd as dfkd

    out = tmp_path / "out"
    base = ["--quick", "--teacher_ckpt", _teacher(tmp_path), "--epochs", "2", "--warmup", "1", "--ep_steps", "2",
            "--kd_steps", "1", "--batch_size", "8", "--synthesis_batch_size", "8", "--g_steps", "1", "--no_progress",
            "--save_dir", str(out)]
    assert dfkd.main(base[:3] + ["--epochs", "1", "--warmup", "0"] + base[7:]) == 0
    (out / ".tmp-abc123.pt").write_bytes(b"half")  # what a save killed mid-write leaves
    (out / "pool" / ".tmp-def456.pt").write_bytes(b"half")
    assert dfkd.main(base[:3] + ["--epochs", "2", "--warmup", "0"] + base[7:] + ["--resume"]) == 0
    assert not [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp-")]
    log = (out / "log.txt").read_text()
    assert "removed 2 temporary file(s) an interrupted save left behind: .tmp-abc123.pt, pool/.tmp-def456.pt" in log
    assert remove_orphans(str(out)) == []


def test_a_resume_from_a_corrupt_last_pt_uses_the_previous_one_and_still_ends_where_an_unbroken_run_does(tmp_path):
    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "models")

    def argv(out, epochs):
        return kd_cli(out, "--path_t", ckpt, "--distill", "kd", "--epochs", str(epochs), "--steps_per_epoch", "3",
                      "--batch_size", "32")

    _in_process(kdtrain.main, argv(tmp_path / "whole", 3))
    _in_process(kdtrain.main, argv(tmp_path / "cut", 3))
    last = tmp_path / "cut" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # the final (epoch-3) checkpoint is now unreadable
    (tmp_path / "cut" / "best.pt").unlink()
    _in_process(kdtrain.main, argv(tmp_path / "cut", 3) + ["--resume"])
    log = (tmp_path / "cut" / "log.txt").read_text()
    assert "resuming from the previous checkpoint" in log and "last.prev.pt (epoch 2)" in log
    assert log.count("epoch 3/3 |") == 2  # the lost epoch was trained again
    _same(_final_student(tmp_path / "whole"), _final_student(tmp_path / "cut"))


# ----------------------------------------------------------------------- synthesis divergence
def _teacher(tmp_path) -> str:
    from registry.models import get_model

    path = tmp_path / "t.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(get_model("resnet8", num_classes=10, in_chans=1).state_dict(), path)
    return str(path)


def test_a_diverging_synthesis_stops_the_run_in_one_line_and_saves_no_bad_generator(tmp_path, capsys):
    from kd import faster_data_free_kd as dfkd

    out = tmp_path / "out"
    argv = ["--quick", "--teacher_ckpt", _teacher(tmp_path), "--epochs", "2", "--warmup", "0", "--ep_steps", "2",
            "--kd_steps", "1", "--batch_size", "8", "--synthesis_batch_size", "8", "--g_steps", "1", "--no_progress",
            "--oh", "1e39", "--save_dir", str(out)]
    assert dfkd.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training diverged: synthesis syn_loss") and "round 1" in err[-1]
    assert "--oh" in err[-1]  # the hint names the synthesis weights, not the student's --lr
    import json

    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"
    assert not (out / "last.pt").exists()  # nothing non-finite was saved
    assert (out / "log.txt").read_text().strip().endswith(err[-1])


def test_a_generator_that_stops_being_finite_after_a_good_epoch_keeps_that_epochs_checkpoint(tmp_path):
    from datafree.api import build_trainer
    from engine.trainer import TrainConfig
    from test_datafree_methods import TinyBNNet, make, tiny_cfg

    teacher = make().teacher
    trainer = build_trainer(teacher, TinyBNNet(width=4), "fast", tiny_cfg(warmup=0, batch_size=4),
                            TrainConfig(epochs=3, lr=0.05, schedule="cosine", save_dir=str(tmp_path), progress=False),
                            None, T=4.0, batch_size=5, kd_steps=2, ep_steps=4, device=torch.device("cpu"))
    trainer.fit(until_epoch=1)
    good = load_checkpoint(str(tmp_path / "last.pt"))
    with torch.no_grad():
        next(trainer.source.synth.generator.parameters()).fill_(float("nan"))
    with pytest.raises(DivergenceError, match="at epoch 2 step 0"):
        trainer.fit()
    kept = load_checkpoint(str(tmp_path / "last.pt"))
    assert kept["epoch"] == good["epoch"] == 0
    gen = kept["source"]["synthesizer"]["generator"]
    assert all(torch.isfinite(v).all() for v in gen.values() if v.is_floating_point())


# ------------------------------------------------------------------ SIGKILL, then --resume
def _run_until_killed(argv, save_dir, min_checkpoints: int = 1, timeout: float = 240.0) -> bool:
    """Start ``argv`` in a fresh process, SIGKILL it once ``min_checkpoints`` ``last.pt`` files
    exist under ``save_dir`` (mid-epoch of a later epoch, wherever it is); returns whether the
    kill landed before the process ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable] + argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = sum(f == "last.pt" for _, _, files in os.walk(save_dir) for f in files)
        if found >= min_checkpoints:
            time.sleep(0.1)  # into the next epoch's steps
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


def _final_student(save_dir) -> dict:
    return load_checkpoint(os.path.join(str(save_dir), "last.pt"))["model"]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _in_process(entry, argv) -> None:
    torch.set_num_threads(1)
    assert entry(argv) == 0


def test_a_data_free_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    from kd import faster_data_free_kd as dfkd

    def argv(out):
        return ["--quick", "--teacher_ckpt", _teacher(tmp_path), "--epochs", "4", "--warmup", "1", "--ep_steps", "6",
                "--kd_steps", "2", "--batch_size", "16", "--synthesis_batch_size", "16", "--g_steps", "2",
                "--no_progress", "--device", "cpu", "--save_dir", str(out)]

    _in_process(dfkd.main, argv(tmp_path / "whole"))
    killed = _run_until_killed(["kd/faster_data_free_kd.py"] + argv(tmp_path / "cut"), tmp_path / "cut")
    assert killed, "the run ended before the kill; make it longer"
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["epoch"] < 3  # it was stopped short
    _in_process(dfkd.main, argv(tmp_path / "cut") + ["--resume"])
    _same(_final_student(tmp_path / "whole"), _final_student(tmp_path / "cut"))
    whole = load_checkpoint(str(tmp_path / "whole" / "last.pt"))["source"]["synthesizer"]
    cut = load_checkpoint(str(tmp_path / "cut" / "last.pt"))["source"]["synthesizer"]
    _same(whole["generator"], cut["generator"])
    assert whole["pool"]["size"] == cut["pool"]["size"]


@pytest.mark.parametrize("stage_checkpoints", [1, 2], ids=["killed_in_the_init_stage", "killed_in_the_main_stage"])
def test_a_two_stage_kd_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, stage_checkpoints):
    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "models", arch="lenet5_bn")

    def argv(out):  # FitNet: a hint-training init stage, then the main stage
        return kd_cli(out, "--teacher", "lenet5_bn", "--t_model_path", ckpt, "--distill", "hint", "--hint_stages", "2",
                      "--init_epochs", "3", "--epochs", "3", "--steps_per_epoch", "20", "--batch_size", "32")

    _in_process(kdtrain.main, argv(tmp_path / "whole"))
    killed = _run_until_killed(["kd/train.py"] + argv(tmp_path / "cut"), tmp_path / "cut",
                               min_checkpoints=stage_checkpoints)
    assert killed, "the run ended before the kill; make it longer"
    stage = tmp_path / "cut" / ("init" if stage_checkpoints == 1 else "")
    assert load_checkpoint(str(stage / "last.pt"))["epoch"] < 2  # killed inside the stage meant, not after it
    _in_process(kdtrain.main, argv(tmp_path / "cut") + ["--resume"])
    _same(_final_student(tmp_path / "whole"), _final_student(tmp_path / "cut"))
    _same(load_checkpoint(str(tmp_path / "whole" / "init" / "last.pt"))["model"],
          load_checkpoint(str(tmp_path / "cut" / "init" / "last.pt"))["model"])


# ------------------------------------------------------- SIGINT / SIGTERM: stop at a step boundary
def _signal_at_step(trainer, step: int, signum=signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process during the ``step``-th training step of ``trainer``."""
    forward, count = trainer.step_forward, [0]

    def step_forward(batch):
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signum)
        return forward(batch)

    trainer.step_forward = step_forward


def _students_equal(a, b) -> None:
    _same(a.objective.student.state_dict(), b.objective.student.state_dict())


@pytest.mark.parametrize("steps_per_epoch", [None, 13], ids=["whole_passes", "fixed_steps_across_passes"])
def test_sigterm_mid_epoch_writes_a_checkpoint_that_resumes_to_the_uninterrupted_weights(tmp_path, steps_per_epoch):
    from engine.data import FixedSteps
    from engine.trainer import Interrupted
    from test_engine import make_trainer

    def trainer(folder, seed=0):
        t = make_trainer(folder, epochs=3, seed=seed)  # 640 digits, batch 32: 20 steps a pass
        if steps_per_epoch:
            t.source = FixedSteps(t.source, steps_per_epoch)
        return t

    a = trainer(tmp_path / "a")
    a.fit()
    b = trainer(tmp_path / "b")
    per_epoch = steps_per_epoch or 20
    _signal_at_step(b, per_epoch + 10)  # epoch 2, step 10 (with 13 a pass: the loader's 2nd pass, batch 4)
    with pytest.raises(Interrupted) as stop:
        b.fit()
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert str(stop.value).startswith("stopped by SIGTERM at epoch 2 step 10; checkpoint: ")
    ckpt = load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert ckpt["epoch"] == 0 and ckpt["in_epoch"]["steps"] == 10 and ckpt["global_step"] == per_epoch + 10
    import json

    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["status"] == "interrupted"
    c = trainer(tmp_path / "b", seed=123)  # a new process: state only from last.pt
    c.resume(str(tmp_path / "b" / "last.pt"))
    c.fit()
    _students_equal(a, c)
    assert c.history[1]["loss"] == pytest.approx(a.history[1]["loss"], rel=1e-6)  # the split epoch's figures
    assert c.history[1]["steps"] == per_epoch


def test_sigint_mid_epoch_of_a_data_free_run_resumes_to_the_uninterrupted_run(tmp_path):
    from engine.trainer import Interrupted
    from test_datafree_methods import _datafree_trainer

    a = _datafree_trainer(tmp_path / "a", 0)
    a.fit()
    b = _datafree_trainer(tmp_path / "b", 0)
    _signal_at_step(b, 3, signal.SIGINT)  # epoch 2 (after a warm-up epoch): round 2, its first KD step
    with pytest.raises(Interrupted) as stop:
        b.fit()
    assert stop.value.exit_code == 130
    ckpt = load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert ckpt["in_epoch"]["steps"] == 3 and ckpt["source"]["position"]["round"] == 1
    c = _datafree_trainer(tmp_path / "b", 7)
    c.resume(str(tmp_path / "b" / "last.pt"))
    c.fit()
    _students_equal(a, c)
    sa, sc = a.source.synth, c.source.synth
    assert torch.equal(sa.pool.images(), sc.pool.images())
    _same(sa.generator.state_dict(), sc.generator.state_dict())


def test_a_signal_during_a_warm_up_epoch_stops_after_it(tmp_path):
    """A warm-up epoch has no training steps: the run stops once that epoch's checkpoint is
    written, and the resume goes on from the next epoch."""
    from engine.trainer import Interrupted
    from test_datafree_methods import _datafree_trainer

    a = _datafree_trainer(tmp_path / "a", 0)
    a.fit()
    b = _datafree_trainer(tmp_path / "b", 0)
    synthesize = b.source.synth.synthesize

    sent = []

    def signalled(epoch):
        if not sent:  # once: a second signal stops at once, without waiting for the boundary
            sent.append(epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return synthesize(epoch)

    b.source.synth.synthesize = signalled
    with pytest.raises(Interrupted, match="after epoch 1; checkpoint: .*last.pt \\(epoch 1\\)"):
        b.fit()
    assert load_checkpoint(str(tmp_path / "b" / "last.pt"))["in_epoch"] is None
    c = _datafree_trainer(tmp_path / "b", 7)
    c.resume(str(tmp_path / "b" / "last.pt"))
    c.fit()
    _students_equal(a, c)


def test_sigterm_to_a_kd_run_exits_143_with_one_line_and_resumes_to_the_same_weights(tmp_path):
    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "models")

    def argv(out):
        return kd_cli(out, "--path_t", ckpt, "--distill", "kd", "--epochs", "4", "--batch_size", "16")

    _in_process(kdtrain.main, argv(tmp_path / "whole"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "kd/train.py"] + argv(tmp_path / "cut"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "cut" / "last.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal; make it longer"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1].strip().splitlines()
    assert proc.returncode == 143, err
    assert err[-1].startswith("stopped by SIGTERM ") and err[-1].endswith("--resume continues"), err[-1]
    assert not [line for line in err if "Traceback" in line]
    _in_process(kdtrain.main, argv(tmp_path / "cut") + ["--resume"])
    _same(_final_student(tmp_path / "whole"), _final_student(tmp_path / "cut"))

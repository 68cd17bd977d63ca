"""torchrun on CPU with gloo, 2 processes (issue 11): data-driven jobs finish, only rank 0 writes,
and 2 ranks x batch B take the same steps as 1 process x batch 2B."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from engine.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def single(script: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_teacher_training_under_torchrun_writes_once_from_rank_0(tmp_path):
    out = tmp_path / "teacher"
    r = torchrun(2, "cifar100.py", "--quick", "--epochs", "2", "--save_dir", str(out), "--no_progress",
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert log.count("epoch 1/2 |") == 1 and log.count("epoch 2/2 |") == 1  # one line per epoch, not per rank
    assert "world_size 2 (torchrun)" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["world_size"] == 2 and metrics["status"] == "finished"
    assert len([f for f in os.listdir(out) if f.startswith("events.out.tfevents")]) == 1
    assert r.stdout.count("epoch 2/2 |") == 1  # rank 1 prints nothing
    assert 0 <= metrics["last_top1"] <= 100


def test_the_pil_pipeline_shards_under_torchrun(tmp_path):
    """The DataLoader path (folder datasets such as ImageNet use it) under 2 ranks: each reads
    half of the training set a pass, the test set is evaluated once in all."""
    out = tmp_path / "pil"
    r = torchrun(2, "cifar100.py", "--quick", "--epochs", "1", "--pipeline", "pil", "--workers", "0", "--save_dir",
                 str(out), "--no_progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    from registry.datasets import get_dataset

    n = len(get_dataset("digits", "train").labels)
    batch = m["args"]["batch_size"]
    assert m["history"][0]["steps"] == -(-(-(-n // 2)) // batch)  # ceil(ceil(n / 2) / batch) steps per rank
    assert m["history"][0]["samples"] == 2 * (-(-n // 2))  # both ranks' shards, padded to equal size
    assert (out / "log.txt").read_text().count("epoch 1/1 |") == 1


def test_two_ranks_of_batch_b_take_the_steps_of_one_process_of_batch_2b(tmp_path):
    """KD of a BatchNorm-free student (LeNet-5-half) from a teacher in eval mode, no augmentation
    (digits): the gradient mean over 2 x B equals the one over 2B, so the weights agree to float
    round-off; evaluation is sharded and summed, so the accuracy is the same figure."""
    from kdtools import digits_teacher_ckpt

    ckpt = digits_teacher_ckpt(tmp_path / "models")

    def argv(out, batch):
        return ["--dataset", "digits", "--teacher", "resnet8", "--path_t", ckpt, "--student", "lenet5_half",
                "--distill", "kd", "--epochs", "2", "--steps_per_epoch", "5", "--batch_size", str(batch),
                "--device", "cpu", "--no_progress", "--save_dir", str(out)]

    one = single("kd/train.py", *argv(tmp_path / "one", 32))
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, "kd/train.py", *argv(tmp_path / "two", 16))
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "one" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "two" / "last.pt"))
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4), k
    control = single("kd/train.py", *argv(tmp_path / "control", 16))  # one process, batch B: other steps
    assert control.returncode == 0, control.stderr[-3000:]
    c = load_checkpoint(str(tmp_path / "control" / "last.pt"))
    assert not all(torch.allclose(a["model"][k], c["model"][k], atol=1e-5, rtol=1e-4) for k in a["model"])
    ha, hb = a["history"], b["history"]
    assert [h["top1"] for h in ha] == pytest.approx([h["top1"] for h in hb], abs=1e-9)
    assert [h["samples"] for h in ha] == [h["samples"] for h in hb] == [160, 160]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-4)
    assert b["args"]["world_size"] == 2


def test_crds_memory_bank_takes_every_ranks_rows(tmp_path):
    """CRD under 2 ranks: each step writes both ranks' embeddings into the memory bank, so the
    bank rank 0 saves has every sample both ranks visited updated (unit rows), not only its own."""
    from kdtools import digits_teacher_ckpt
    from registry.datasets import get_dataset

    ckpt = digits_teacher_ckpt(tmp_path / "models")
    out = tmp_path / "crd"
    r = torchrun(2, "kd/train.py", "--dataset", "digits", "--teacher", "resnet8", "--path_t", ckpt, "--student",
                 "lenet5_half_bn", "--distill", "crd", "--epochs", "1", "--steps_per_epoch", "3", "--batch_size", "16",
                 "--nce_k", "64", "--device", "cpu", "--no_progress", "--save_dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    bank = load_checkpoint(str(out / "last.pt"))["modules"]["crd_memory"]["memory_s"]
    n = len(get_dataset("digits", "train").labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # the shared shuffle of the first pass
    seen = torch.cat([order[0::2][:48], order[1::2][:48]])  # 3 steps of 16 on each rank
    norms = bank.norm(dim=1)
    assert torch.allclose(norms[seen], torch.ones(96), atol=1e-5)  # rank 1's rows are in rank 0's bank too
    assert len(set(seen.tolist())) == 96


@pytest.mark.parametrize("method,extra", [("dml", []), ("byot", []), ("hint", ["--init_epochs", "1",
                                                                               "--hint_stages", "2"])])
def test_peers_branches_and_two_stage_methods_run_under_torchrun(tmp_path, method, extra):
    """DML's peers, BYOT's branches and FitNet's init stage (its regressor) under 2 ranks: the
    run finishes, every stage logs once per epoch and records world_size 2."""
    from kdtools import digits_teacher_ckpt

    ckpt = digits_teacher_ckpt(tmp_path / "models", arch="lenet5_bn")
    student = "resnet8" if method == "byot" else "lenet5_half_bn"
    out = tmp_path / method
    r = torchrun(2, "kd/train.py", "--dataset", "digits", "--teacher", "lenet5_bn", "--path_t", ckpt, "--student",
                 student, "--distill", method, *extra, "--epochs", "2", "--steps_per_epoch", "3", "--batch_size", "16",
                 "--device", "cpu", "--no_progress", "--save_dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    stages = [out] + ([out / "init"] if extra else [])
    for stage in stages:
        m = json.loads((stage / "metrics.json").read_text())
        assert m["status"] == "finished" and m["args"]["world_size"] == 2
        assert [h["samples"] for h in m["history"]][-1] == 2 * 3 * 16  # both ranks' batches counted
    assert (out / "log.txt").read_text().count("epoch 2/2 |") == 1


# ------------------------------------------------------------------------------- data-free
FIRST_ORDER = ["fast_meta", "fast_meta:0", "fast", "dafl"]  # FOMAML, Reptile, fast, a generative method
SECOND_ORDER = "fast_meta:2@1"  # one epoch: second-order MAML amplifies round-off (see below)


def _state(folder, spec: str, rank: int = 0) -> dict:
    return torch.load(str(folder / spec.split("@")[0].replace(":", "_maml") / f"rank{rank}.pt"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_ranks_synthesize_and_distil_as_one_process_of_the_global_batch(tmp_path):
    """tests/dist_synthesis.py (float64, no augmentation, BN-free student): 2 ranks x 8 images
    against 1 process x 16, both starting every batch from the same numbers. The generator (its
    BN on the global batch, the teacher's BN statistics merged over the ranks, the gradients
    all-reduced), each rank's pool shard (the rows of the one process's pool) and the student
    agree to float64 round-off; one process with batch 8 (the control) does not."""
    methods = FIRST_ORDER + [SECOND_ORDER]
    one = single("tests/dist_synthesis.py", str(tmp_path / "one"), "16", *methods)
    assert one.returncode == 0, one.stderr[-3000:]
    half = single("tests/dist_synthesis.py", str(tmp_path / "half"), "8", "fast_meta")
    assert half.returncode == 0, half.stderr[-3000:]
    two = torchrun(2, "tests/dist_synthesis.py", str(tmp_path / "two"), "16", *methods, "cmi", "deepinv")
    assert two.returncode == 0, two.stderr[-3000:]
    for spec in FIRST_ORDER + [SECOND_ORDER]:
        a, r0, r1 = _state(tmp_path / "one", spec), _state(tmp_path / "two", spec), _state(tmp_path / "two", spec, 1)
        assert _max_diff(r0["generator"], r1["generator"]) == 0.0, spec  # the ranks hold one generator
        assert _max_diff(r0["student"], r1["student"]) == 0.0, spec
        # second-order MAML differentiates through Adam's 1 / (sqrt(v) + eps): merely permuting the
        # batch of one float64 process moves its generator by 3e-9 after one round (1e-4 after three)
        tol = 1e-7 if spec == SECOND_ORDER else 1e-10
        assert _max_diff(a["generator"], r0["generator"]) < tol, spec
        assert _max_diff(a["student"], r0["student"]) < 1e-10, spec
        if a["pool"] is not None:  # rank r's shard is rows r*8 .. r*8+7 of the one process's pool
            assert torch.equal(a["pool"], torch.cat([r0["pool"], r1["pool"]])), spec
    control = _state(tmp_path / "half", "fast_meta")
    assert _max_diff(control["generator"], _state(tmp_path / "one", "fast_meta")["generator"]) > 1e-4
    for spec in ("cmi", "deepinv"):  # finish under torchrun, with one shared generator / head
        r0, r1 = _state(tmp_path / "two", spec), _state(tmp_path / "two", spec, 1)
        assert _max_diff(r0["student"], r1["student"]) == 0.0, spec
        if r0["head"] is not None:
            assert _max_diff(r0["head"], r1["head"]) == 0.0, spec


def _dfkd_argv(out, teacher: str, epochs: int = 3) -> list:
    return ["--dataset", "digits", "--teacher", "resnet8", "--teacher_ckpt", teacher, "--student", "lenet5_bn",
            "--epochs", str(epochs), "--warmup", "1", "--batch_size", "16", "--synthesis_batch_size", "16",
            "--kd_steps", "3", "--ep_steps", "6", "--g_steps", "2", "--ngf", "16", "--nz", "64", "--T", "4",
            "--lr", "0.05", "--no_progress", "--device", "cpu", "--save_dir", str(out)]


def _digits_teacher(tmp_path) -> str:
    from kdtools import digits_teacher_ckpt

    return digits_teacher_ckpt(tmp_path / "models")


def test_a_data_free_run_under_torchrun_writes_once_and_keeps_a_pool_shard_per_rank(tmp_path):
    out = tmp_path / "df"
    r = torchrun(2, "kd/faster_data_free_kd.py", *_dfkd_argv(out, _digits_teacher(tmp_path)))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert log.count("epoch 3/3 |") == 1 and "world_size 2 (torchrun)" in log
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "finished" and m["args"]["world_size"] == 2
    assert m["history"][-1]["syn_images"] == 2 * 3 * 2 * 16  # both shards: 3 epochs x 2 rounds x 16 images
    assert m["history"][-1]["samples"] == 2 * 6 * 16
    ckpt = load_checkpoint(str(out / "last.pt"))
    ranks = ckpt["source"]["ranks"]
    assert len(ranks) == 2 and "pool" not in ckpt["source"]["synthesizer"]
    for r, state in enumerate(ranks):  # every shard is checkpointed: its chunks, in its own folder
        pool = state["synthesizer"]["pool"]
        assert pool["size"] == 3 * 2 * 16 and pool["dir"] == str((out / "pool" / f"rank{r}").resolve())
        assert all((out / "pool" / f"rank{r}" / c).exists() for c in pool["chunks"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["epoch0001.png", "epoch0002.png", "epoch0003.png"]
    assert len([f for f in os.listdir(out) if f.startswith("events.out.tfevents")]) == 1
    # a 2-process run resumes only with 2 processes: said in one line before anything is written
    before = sorted(str(p) for p in out.rglob("*"))
    again = single("kd/faster_data_free_kd.py", *_dfkd_argv(out, _digits_teacher(tmp_path), 4), "--resume")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].endswith(
        "the run was trained by 2 process(es) and each kept its own pool shard; resume it with 2 (torchrun "
        "--nproc_per_node 2), not 1")
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_a_data_free_torchrun_run_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL one of 2 data-free workers after the first checkpoint; the same torchrun line with
    --resume restores every rank's pool shard and RNG stream, the shared generator, its
    meta-optimiser and the BN-statistics EMA, and ends where an uninterrupted run ends."""
    teacher = _digits_teacher(tmp_path)
    whole = torchrun(2, "kd/faster_data_free_kd.py", *_dfkd_argv(tmp_path / "whole", teacher, 6))
    assert whole.returncode == 0, whole.stderr[-3000:]
    done = _kill_a_worker(_dfkd_argv(tmp_path / "cut", teacher, 6), tmp_path / "cut", "kd/faster_data_free_kd.py")
    assert done < 5
    again = torchrun(2, "kd/faster_data_free_kd.py", *_dfkd_argv(tmp_path / "cut", teacher, 6), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "whole" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["source"]["synthesizer"]["generator"].items():
        assert torch.equal(v, b["source"]["synthesizer"]["generator"][k]), k
    for ra, rb in zip(a["source"]["ranks"], b["source"]["ranks"]):
        assert ra["synthesizer"]["pool"]["size"] == rb["synthesizer"]["pool"]["size"]
        assert torch.equal(ra["synthesizer"]["pool"]["order"], rb["synthesizer"]["pool"]["order"])


def _children(pid: int) -> list:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _kill_a_worker(argv, out, script: str) -> int:
    """Start ``script argv`` on 2 processes, SIGKILL one worker once ``out/last.pt`` exists (torchrun
    then stops the other); returns the epoch index of the checkpoint left behind."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), script, *argv]
    agent = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and agent.poll() is None and not last.exists():
        time.sleep(0.05)
    workers = _children(agent.pid)
    assert agent.poll() is None and len(workers) == 2, "the run ended before the kill; make it longer"
    os.kill(max(workers), signal.SIGKILL)
    agent.wait(timeout=300)
    assert agent.returncode != 0
    return load_checkpoint(str(last))["epoch"]


def test_a_torchrun_run_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL one of 2 workers mid-run (torchrun then stops the other); the same torchrun line
    with --resume continues from last.pt, every rank with its own RNG stream, and the final
    student equals an uninterrupted 2-process run's."""
    from kdtools import digits_teacher_ckpt

    ckpt = digits_teacher_ckpt(tmp_path / "models")

    def argv(out):
        return ["--dataset", "digits", "--teacher", "resnet8", "--path_t", ckpt, "--student", "lenet5_half_bn",
                "--distill", "kd", "--epochs", "6", "--steps_per_epoch", "8", "--batch_size", "16", "--device", "cpu",
                "--no_progress", "--save_dir", str(out)]

    whole = torchrun(2, "kd/train.py", *argv(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    done = _kill_a_worker(argv(tmp_path / "cut"), tmp_path / "cut", "kd/train.py")
    assert done < 5  # it was stopped short of the end
    again = torchrun(2, "kd/train.py", *argv(tmp_path / "cut"), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "whole" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(b["rng_ranks"]) == 2 and not torch.equal(b["rng_ranks"][0]["torch"], b["rng_ranks"][1]["torch"])


def test_a_worker_restarted_by_torchrun_continues_from_the_checkpoint(tmp_path, monkeypatch):
    """What a worker does when torchrun (--max-restarts) starts it again: the same command line
    resumes from last.pt, or starts again when the first attempt saved nothing (here in one
    process with torchrun's restart counter set; a real gloo restart on CPU is not exercised)."""
    import argparse

    from engine.launch import resume_after_restart

    args = argparse.Namespace(save_dir=str(tmp_path / "run"), resume=None, overwrite=True)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    resume_after_restart(args)
    assert (args.resume, args.overwrite) == (None, True)  # the first attempt: as given
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    resume_after_restart(args)
    assert (args.resume, args.overwrite) == (None, True)  # nothing saved yet: start again
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    resume_after_restart(args)
    assert (args.resume, args.overwrite, args.elastic_restart) == ("auto", False, 1)

    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "models")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert kdtrain.main(kd_cli(whole, "--path_t", ckpt, "--epochs", "3", "--steps_per_epoch", "4")) == 0
    assert kdtrain.main(kd_cli(cut, "--path_t", ckpt, "--epochs", "2", "--steps_per_epoch", "4")) == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the same line again, as a restarted worker runs it
    assert kdtrain.main(kd_cli(cut, "--path_t", ckpt, "--epochs", "3", "--steps_per_epoch", "4")) == 0
    assert "torchrun restart 1: continuing from the last checkpoint" in (cut / "log.txt").read_text()
    a, b = load_checkpoint(str(whole / "last.pt")), load_checkpoint(str(cut / "last.pt"))
    assert b["epoch"] == 2

"""Scaling efficiency under torchrun: the same job on 1 process and on N processes.

Two jobs, each run once as one process and once under ``torchrun --nproc_per_node N`` with the
same per-process batch (so N processes do N x the work of a step, as data-parallel training does):

* ``kd``: ``kd/train.py`` KD on digits (tensor pipeline): training images per second;
* ``datafree``: ``kd/faster_data_free_kd.py --method fast_meta`` on digits: each rank synthesizes
  its share of the global synthesis batch (N x ``--batch``) and trains on its pool shard; the
  figure is KD images per second of the data-free epoch, synthesis included (the epoch's
  samples over its whole training time, evaluation excluded).

From each run's ``metrics.json`` (the first epoch, which warms up, is not timed): the speed-up
``throughput(N) / throughput(1)`` and the efficiency, the speed-up per device. On GPUs each
process brings its own (efficiency = speed-up / N); on a CPU machine the N processes share the
cores one process used (each gets ``cores / N`` threads), so efficiency = speed-up, and it says
what the data-parallel path costs against one process on the same cores, not how a GPU node
scales.

    python -m bench.scaling                      # both jobs, 1 and 2 processes, about 2 minutes on 2 CPU cores
    python -m bench.scaling --job datafree --nproc 4 --device cuda --json run/bench/scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_command(job: str, args, out: str) -> List[str]:
    common = ["--teacher", args.teacher, "--student", args.student, "--dataset", "digits", "--epochs", str(args.epochs),
              "--batch_size", str(args.batch), "--device", args.device, "--no_progress", "--save_dir", out,
              "--overwrite"]
    if job == "kd":
        cmd = ["kd/train.py", "--distill", "kd", "--steps_per_epoch", str(args.steps)]
        return cmd + common + (["--t_model_path", args.teacher_ckpt] if args.teacher_ckpt else [])
    # fast_meta at a small Fast-2 setting: two synthesis rounds an epoch, each followed by steps / 2 KD steps
    cmd = ["kd/faster_data_free_kd.py", "--method", "fast_meta", "--synthesis_batch_size", str(args.batch),
           "--g_steps", "2", "--ngf", "32", "--warmup", "0", "--ep_steps", str(args.steps),
           "--kd_steps", str(max(args.steps // 2, 1)), "--T", "20", "--lr", "0.1"]
    return cmd + common + (["--teacher_ckpt", args.teacher_ckpt] if args.teacher_ckpt else [])


def run_job(job: str, nproc: int, args, out: str) -> dict:
    threads = max((os.cpu_count() or 1) // nproc, 1) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    launcher = ([sys.executable] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
                 "127.0.0.1", "--master_port", str(_free_port())])
    r = subprocess.run(launcher + job_command(job, args, out), cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench.scaling: the {nproc}-process {job} run failed: "
                           f"{(r.stderr.strip().splitlines() or [''])[-1]}")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    timed = m["history"][1:] or m["history"]  # the first epoch warms up (allocations, caches)
    samples = sum(h["samples"] for h in timed)
    seconds = sum(h["train_time"] for h in timed)  # data-free: the synthesis rounds are inside
    row = {"job": job, "nproc": nproc, "threads_per_process": threads, "images": samples, "train_s": seconds,
           "images_per_s": samples / seconds}
    if job == "datafree":
        row["synthesis_s"] = sum(h.get("syn_time", 0.0) for h in timed)
    return row


def main(argv: Optional[List[str]] = None) -> List[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default="both", choices=["kd", "datafree", "both"])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--teacher", default="resnet8")
    ap.add_argument("--teacher_ckpt", default=None, help="default: the cifar100.py --quick teacher (trained if missing)")
    ap.add_argument("--student", default="resnet8")  # data-free: also resnet8 (BN, as the recipes' students)
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.teacher_ckpt is None and args.teacher == "resnet8":
        import cifar100

        args.teacher_ckpt = cifar100.ensure_quick_teacher(["--no_progress", "--device", args.device])
    jobs = ["kd", "datafree"] if args.job == "both" else [args.job]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in jobs:
            runs = [run_job(job, n, args, os.path.join(tmp, f"{job}{n}")) for n in (1, args.nproc)]
            base = runs[0]["images_per_s"]
            for r in runs:  # on CPU both runs share the same cores; on GPUs each process brings its own device
                devices = 1 if args.device == "cpu" else r["nproc"]
                r["speedup"] = r["images_per_s"] / base
                r["efficiency"] = r["speedup"] / devices
            rows += runs
    print(f"{args.teacher} -> {args.student} on digits, batch {args.batch} per process (data-free: also the synthesis "
          f"batch), {args.steps} steps an epoch, {args.epochs} epochs (the first not timed), {args.device}\n")
    print("| job | processes | threads each | images/s | speed-up | efficiency |\n|---|---|---|---|---|---|")
    for r in rows:
        name = "KD" if r["job"] == "kd" else "data-free epoch (fast_meta, synthesis included)"
        print(f"| {name} | {r['nproc']} | {r['threads_per_process']} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | "
              f"{r['efficiency']:.2f} |")
    if args.json:
        from bench import save_json
        from engine.utils import library_versions

        save_json(args.json, {"rows": rows, "settings": vars(args), "versions": library_versions()})
    return rows


if __name__ == "__main__":
    main()

"""Scaling efficiency under torchrun: the same job on 1 process and on N processes.

Runs ``kd/train.py`` (a KD job on digits, tensor pipeline) once as one process and once under
``torchrun --nproc_per_node N``, with the same per-process batch (so N processes take N x the
images per step, as data-parallel training does), and reads each run's ``metrics.json``:
training images per second (the epochs' samples over their training time, evaluation excluded)
the speed-up ``throughput(N) / throughput(1)`` and the efficiency, the speed-up per device:
on GPUs each process brings its own (efficiency = speed-up / N); on a CPU machine the N processes
share the cores one process used (each gets ``cores / N`` threads), so efficiency = speed-up,
and it says what the data-parallel path costs against one process on the same cores, not how
a GPU node scales.

    python -m bench.scaling                      # 1 and 2 processes, about a minute on 2 CPU cores
    python -m bench.scaling --nproc 4 --device cuda --json run/bench/scaling.json
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


def run_job(nproc: int, args, out: str) -> dict:
    threads = max((os.cpu_count() or 1) // nproc, 1) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    job = ["kd/train.py", "--dataset", "digits", "--distill", "kd", "--teacher", args.teacher, "--student", args.student,
           "--epochs", str(args.epochs), "--steps_per_epoch", str(args.steps), "--batch_size", str(args.batch),
           "--device", args.device, "--no_progress", "--save_dir", out, "--overwrite"]
    if args.teacher_ckpt:
        job += ["--t_model_path", args.teacher_ckpt]
    launcher = ([sys.executable] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
                 "127.0.0.1", "--master_port", str(_free_port())])
    r = subprocess.run(launcher + job, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench.scaling: the {nproc}-process run failed: {(r.stderr.strip().splitlines() or [''])[-1]}")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    timed = m["history"][1:] or m["history"]  # the first epoch warms up (allocations, caches)
    samples = sum(h["samples"] for h in timed)
    seconds = sum(h["train_time"] for h in timed)
    return {"nproc": nproc, "threads_per_process": threads, "images": samples, "train_s": seconds,
            "images_per_s": samples / seconds}


def main(argv: Optional[List[str]] = None) -> List[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--teacher", default="resnet8")
    ap.add_argument("--teacher_ckpt", default=None, help="default: the cifar100.py --quick teacher (trained if missing)")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.teacher_ckpt is None and args.teacher == "resnet8":
        import cifar100

        args.teacher_ckpt = cifar100.ensure_quick_teacher(["--no_progress", "--device", args.device])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_job(n, args, os.path.join(tmp, f"n{n}")) for n in (1, args.nproc)]
    base = rows[0]["images_per_s"]
    for r in rows:  # on CPU both runs share the same cores; on GPUs each process brings its own device
        devices = 1 if args.device == "cpu" else r["nproc"]
        r["speedup"] = r["images_per_s"] / base
        r["efficiency"] = r["speedup"] / devices
    print(f"KD {args.teacher} -> {args.student} on digits, batch {args.batch} per process, {args.steps} steps an "
          f"epoch, {args.epochs} epochs (the first not timed), {args.device}\n")
    print("| processes | threads each | images/s | speed-up | efficiency |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nproc']} | {r['threads_per_process']} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x | "
              f"{r['efficiency']:.2f} |")
    if args.json:
        from bench import save_json
        from engine.utils import library_versions

        save_json(args.json, {"rows": rows, "settings": vars(args), "versions": library_versions()})
    return rows


if __name__ == "__main__":
    main()

"""Peak memory per data-free synthesizer and per KD method.

Each item runs in a fresh Python process, so one item's peak never hides another's:

* a synthesizer: the ``bench.synthesis`` set-up (the ``cifar100.py --quick`` digits ResNet-8
  teacher, LeNet-5-half-BN student, synthesis batch ``--batch`` 256, the method's reference
  weights), ``--rounds`` synthesis rounds of ``min(g_steps, --g_steps)`` inner steps each (the
  memory of a round does not grow with its steps), then one KD batch sampled;
* a KD method: the ``bench.kd`` set-up (ResNet-56 -> ResNet-20, CIFAR-100 shapes, batch 64, the
  method's default weights and extra modules), ``--steps`` trainer steps.

Reported: on CUDA, the peak of ``torch.cuda.max_memory_allocated`` during the work and that
peak above the memory held before it (the models, the optimiser, the batches); on CPU, the
process's peak resident set (``ru_maxrss``) and that peak above the resident set before the work.

    python -m bench.memory                               # everything, about 5 minutes on 2 CPU cores
    python -m bench.memory --synth fast_meta deepinv --kd kd crd --json run/bench/memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Meter:
    """The peak during a block of work, and that peak above what was held when it began."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    def __enter__(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.before = self.torch.cuda.memory_allocated() / 2**20
        else:
            self.before = _rss_mb()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak = _peak_rss_mb()
        self.work = self.peak - self.before
        return False


def _child_synth(method: str, args) -> dict:
    from bench.synthesis import SETTINGS, make_synth, quick_teacher
    from engine.utils import seed_everything

    import torch

    device = torch.device(args.device)
    teacher, spec = quick_teacher(device)
    seed_everything(0)
    synth, name, _ = make_synth(method, teacher, spec, args.batch, device)
    synth.cfg.g_steps = min(synth.cfg.g_steps, args.g_steps)
    with _Meter(device) as m:
        for _ in range(args.rounds):
            synth.synthesize(0)
        synth.sample(args.batch)
    return {"kind": "synthesizer", "name": method, "setting": SETTINGS[method][0], "g_steps": synth.cfg.g_steps,
            "batch": args.batch, "peak_mb": m.peak, "work_mb": m.work}


def _child_kd(method: str, args) -> dict:
    import torch

    from bench.kd import make_batches, make_distiller
    from engine.data import FixedSteps
    from engine.trainer import TrainConfig, Trainer
    from kd.distillers import DataInfo, get_distiller_class
    from registry.datasets import dataset_spec

    device = torch.device(args.device)
    spec = dataset_spec("cifar100")
    info = DataInfo(num_classes=spec.num_classes, in_chans=spec.in_chans, image_size=spec.image_size,
                    mean=spec.mean, std=spec.std, num_samples=50000,
                    labels=torch.arange(50000) % spec.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        distiller = make_distiller(method, args.teacher, args.student, info, device, tmp)
        batches = make_batches(info, args.kd_batch, args.steps, device, get_distiller_class(method).needs_index)
        cfg = TrainConfig(epochs=1, lr=0.0, schedule="constant", save_dir=tmp, progress=False, log_every=10 ** 9,
                          amp="off")
        trainer = Trainer(distiller, FixedSteps(batches, args.steps), None, cfg, device)
        with _Meter(device) as m:
            trainer.train_one_epoch(0)
    return {"kind": "kd", "name": method, "pair": f"{args.teacher} -> {args.student}", "batch": args.kd_batch,
            "peak_mb": m.peak, "work_mb": m.work}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", nargs="*", default=None, help="synthesizers (default: all; none: --synth)")
    ap.add_argument("--kd", nargs="*", default=None, help="KD methods (default: all; none: --kd)")
    ap.add_argument("--batch", type=int, default=256, help="synthesis batch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--g_steps", type=int, default=5, help="inner steps per round at most")
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--kd_batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # kind:name, run in this process
    return ap


def _table(rows: List[dict], device: str) -> str:
    what = "CUDA allocated" if device.startswith("cuda") else "resident set"
    lines = [f"| kind | name | setting | peak {what} (MB) | above the held memory (MB) |", "|---|---|---|---|---|"]
    for r in rows:
        setting = (f"{r['setting']} ({r['g_steps']} inner steps a round), batch {r['batch']}"
                   if r["kind"] == "synthesizer" else f"{r['pair']}, batch {r['batch']}")
        lines.append(f"| {r['kind']} | {r['name']} | {setting} | {r['peak_mb']:.0f} | {r['work_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> List[dict]:
    args = build_parser().parse_args(argv)
    from engine.utils import library_versions, resolve_device

    args.device = str(resolve_device(args.device))
    if args.child:
        import torch

        torch.manual_seed(0)
        kind, name = args.child.split(":", 1)
        row = _child_synth(name, args) if kind == "synth" else _child_kd(name, args)
        print("RESULT " + json.dumps(row))
        return [row]
    from datafree import SYNTHESIZERS
    from kd.distillers import list_distillers

    synths = sorted(SYNTHESIZERS) if args.synth is None else args.synth
    kds = list_distillers() if args.kd is None else args.kd
    given = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for kind, names in (("synth", synths), ("kd", kds)):
        for name in names:
            cmd = [sys.executable, "-m", "bench.memory", "--child", f"{kind}:{name}", "--device", args.device,
                   "--batch", str(args.batch), "--rounds", str(args.rounds), "--g_steps", str(args.g_steps),
                   "--teacher", args.teacher, "--student", args.student, "--kd_batch", str(args.kd_batch),
                   "--steps", str(args.steps)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            found = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not found:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"bench.memory {kind}:{name} failed: {tail}")
            rows.append(json.loads(found[-1][len("RESULT "):]))
            print(f"{kind} {name}: peak {rows[-1]['peak_mb']:.0f} MB, {rows[-1]['work_mb']:.0f} MB above the held "
                  "memory", file=sys.stderr)
    print(f"\nPeak memory per item ({args.device}; each in a fresh process; command: python -m bench.memory "
          f"{' '.join(given)})\n")
    print(_table(rows, args.device))
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        from bench import save_json

        save_json(args.json, {"rows": rows, "device": args.device, "versions": versions, "settings": vars(args)})
    return rows


if __name__ == "__main__":
    main()

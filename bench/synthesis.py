"""Synthesis throughput of every data-free method, and one fast_meta epoch with its breakdown.

Teacher: the ``cifar100.py --quick`` ResNet-8 digits teacher (trained first if missing);
student: LeNet-5-half-BN; synthesis batch 256 (``--batch``). Each method runs with its
reference setting (weights, g_steps, KD steps per round: ``scripts/``). Timings synchronise the
device; the first round is a warm-up and excluded; figures are medians over ``--repeats``.

* pool methods (fast, fast_meta, deepinv, cmi): the median time of one inner step is measured
  and a round costs ``g_steps`` of them (every inner step does the same work); images/s is
  ``batch / round time``. ``--full_rounds`` times whole rounds instead (slow for deepinv-2k).
* generative methods (dafl, zskt, dfad, dfq): a round is one generator step plus ``kd_steps``
  fresh batches drawn for the student; images/s is ``kd_steps * batch / round time``.

    python -m bench.synthesis                     # table on stdout
    python -m bench.synthesis --json run/bench/synthesis.json --methods fast_meta deepinv
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


import cifar100
from datafree import SYNTHESIZERS, SynthesisConfig
from datafree.api import build_trainer
from bench import save_json
from engine.checkpoint import load_weights
from engine.trainer import TrainConfig
from engine.utils import library_versions, resolve_device, seed_everything, synchronize
from registry.datasets import dataset_spec
from registry.models import get_model

# method -> (reference setting name, SynthesisConfig overrides, kd_steps per round)
SETTINGS = {
    "fast_meta": ("Fast-10 (WRN)", dict(g_steps=10, lr_g=2e-3, lr_z=0.01, adv=1.1, bn=10, oh=0.4, bn_mmt=0.9), 400),
    "fast": ("fast, g_steps 10", dict(g_steps=10, lr_g=2e-3, lr_z=0.01, adv=1.1, bn=10, oh=0.4, bn_mmt=0.9), 400),
    "deepinv": ("DeepInv-2k", dict(g_steps=2000, lr_g=0.1, adv=1, bn=10, oh=1), 400),
    "cmi": ("CMI-500 (cr 0.8)", dict(g_steps=500, lr_g=1e-3, adv=0.5, bn=1, oh=1, cr=0.8, cr_T=0.2), 400),
    "dafl": ("DAFL", dict(g_steps=1, lr_g=1e-3, oh=1, act=1e-3, balance=20, nz=512), 5),
    "zskt": ("ZSKT", dict(g_steps=1, lr_g=1e-3, adv=1), 5),
    "dfad": ("DFAD", dict(g_steps=1, lr_g=1e-3, adv=1), 5),
    "dfq": ("DFQ", dict(g_steps=1, lr_g=1e-3, adv=1, bn=1, oh=1, balance=20), 10),
}


def quick_teacher(device):
    path = cifar100.ensure_quick_teacher(["--no_progress"])
    spec = dataset_spec("digits")
    teacher = load_weights(get_model(cifar100.QUICK["model"], num_classes=10, in_chans=1), path)
    return teacher.to(device).eval(), spec


def make_synth(method, teacher, spec, batch, device, warmup=0):
    name, over, kd_steps = SETTINGS[method]
    cfg = SynthesisConfig(num_classes=10, img_size=spec.image_size, nc=spec.in_chans, mean=spec.mean, std=spec.std,
                          batch_size=batch, warmup=warmup, pad=0, flip=False, **over)
    student = get_model("lenet5_half_bn", num_classes=10).to(device)
    return SYNTHESIZERS[method](teacher, student, cfg, device), name, kd_steps


def timed(fn, device):
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def measure_method(method, teacher, spec, args, device) -> dict:
    seed_everything(0)
    synth, name, kd_steps = make_synth(method, teacher, spec, args.batch, device)
    g_steps = synth.cfg.g_steps
    if synth.uses_pool and not args.full_rounds:
        synth.cfg.g_steps = args.probe_steps
        synth.synthesize(0)  # warm-up round
        per_step = statistics.median(timed(lambda: synth.synthesize(0), device) / args.probe_steps
                                     for _ in range(args.repeats))
        round_s = per_step * g_steps
        images = args.batch
    else:
        synth.synthesize(0)
        synth.sample(args.batch)

        def one_round():
            synth.synthesize(0)
            if not synth.uses_pool:
                for _ in range(kd_steps):
                    synth.sample(args.batch)

        round_s = statistics.median(timed(one_round, device) for _ in range(args.repeats))
        per_step = round_s / max(g_steps, 1) if synth.uses_pool else None
        images = args.batch if synth.uses_pool else kd_steps * args.batch
    return {"method": method, "setting": name, "g_steps": g_steps, "step_ms": per_step * 1e3 if per_step else None,
            "round_s": round_s, "images_per_round": images, "images_per_s": images / round_s}


def fast_meta_epoch(teacher, spec, args, device) -> dict:
    """One post-warm-up fast_meta epoch (Fast-10 setting) through the real trainer, kd_steps =
    ep_steps = --epoch_steps, KD batch = synthesis batch."""
    from engine.data import build_loader

    seed_everything(0)
    _, over, _ = SETTINGS["fast_meta"]
    cfg = SynthesisConfig(num_classes=10, img_size=spec.image_size, nc=spec.in_chans, mean=spec.mean, std=spec.std,
                          batch_size=args.batch, warmup=0, pad=0, flip=False, **over)
    student = get_model("lenet5_half_bn", num_classes=10)
    test = build_loader("digits", "test", 256, device, "./data/torchdata")
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(epochs=2, lr=0.2, weight_decay=1e-4, schedule="cosine", save_dir=tmp, progress=False,
                            log_every=10**9)
        from engine.logger import RunLogger

        logger = RunLogger(tmp, tensorboard=False, console=False)
        trainer = build_trainer(teacher, student, "fast_meta", cfg, train, test, T=20, batch_size=args.batch,
                                kd_steps=args.epoch_steps, ep_steps=args.epoch_steps, device=device, logger=logger)
        trainer.fit(until_epoch=1)  # warm-up epoch (first calls, allocator)
        trainer.fit()
        h = trainer.history[-1]
    kd = h["train_time"] - h["syn_time"]
    return {"epoch_s": h["epoch_time"], "synthesis_s": h["syn_time"], "kd_s": kd, "eval_s": h["eval_time"],
            "other_s": h["epoch_time"] - h["train_time"] - h["eval_time"], "kd_steps": h["steps"],
            "kd_images_per_s": h["samples"] / kd if kd > 0 else 0.0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(SETTINGS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probe_steps", type=int, default=3, help="inner steps per timed round (pool methods)")
    p.add_argument("--full_rounds", action="store_true", help="time whole rounds at the published g_steps")
    p.add_argument("--epoch_steps", type=int, default=50, help="KD steps in the timed fast_meta epoch")
    p.add_argument("--no_epoch", action="store_true", help="skip the fast_meta epoch")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    teacher, spec = quick_teacher(device)
    rows = [measure_method(m, teacher, spec, args, device) for m in args.methods]
    print(f"\nSynthesis throughput ({device}, digits ResNet-8 teacher, LeNet-5-half-BN student, batch {args.batch}; "
          f"median of {args.repeats}, first round excluded)\n")
    print("| method | setting | g_steps | ms / inner step | s / round | images / round | images / s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        step = f"{r['step_ms']:.1f}" if r["step_ms"] is not None else "-"
        print(f"| {r['method']} | {r['setting']} | {r['g_steps']} | {step} | {r['round_s']:.2f} | "
              f"{r['images_per_round']} | {r['images_per_s']:.1f} |")
    epoch = None
    if not args.no_epoch:
        epoch = fast_meta_epoch(teacher, spec, args, device)
        print(f"\nOne fast_meta epoch (Fast-10 setting, {epoch['kd_steps']} KD steps of batch {args.batch}, "
              f"1 synthesis round):\n")
        print("| part | seconds | share |")
        print("|---|---|---|")
        for k in ("synthesis_s", "kd_s", "eval_s", "other_s"):
            print(f"| {k[:-2]} | {epoch[k]:.2f} | {100 * epoch[k] / epoch['epoch_s']:.0f}% |")
        print(f"| total | {epoch['epoch_s']:.2f} | 100% |")
        print(f"\nKD steps alone: {epoch['kd_images_per_s']:.0f} images/s")
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        save_json(args.json, {"rows": rows, "fast_meta_epoch": epoch, "args": vars(args), "versions": versions,
                               "device": str(device)})
    return rows, epoch


if __name__ == "__main__":
    main()

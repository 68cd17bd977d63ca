"""Before/after figures for each speed optimisation of the engine (issue 4).

Each row times the same job with the optimisation off ("before") and on ("after"), alternating
the two, one warm-up call each excluded, median of ``--repeats``; every timing synchronises the
device. Jobs use CIFAR-100-shaped tensors of random pixels (teacher ``--teacher``, student
``--student``):

* ``optimizer kernels``: the optimiser step alone (SGD on the student, Adam on the generator),
  a KD step through the trainer with SGD ``loop`` / ``foreach`` / ``fused``, and a fast_meta round (Adam on the generator's 2.3M parameters, g_steps 5) with
  Adam ``loop`` / ``fused``;
* ``hooks off in KD steps``: a KD step while a CMI synthesizer's hooks (BN statistics + feature
  means, 2 per teacher BN layer) stay on, as in the reference (notes §6 item 13), vs off;
* ``fast_meta G' per round``: ``copy.deepcopy(G)`` (the reference) vs copying the weights into
  one persistent module;
* ``RandomResizedCrop``: kornia's (reads each batch's boxes back to the host) vs ours (one
  ``grid_sample``), batch 256, CMI's local view;
* ``torch.compile`` (unless ``--no_compile``): the KD step eager vs compiled (compile time
  reported separately, not in the step time);
* bf16 autocast and channels_last are CUDA-only paths and are measured only on CUDA.

    python -m bench.optimizations                         # about 6 minutes on 2 CPU cores
    python -m bench.optimizations --json run/bench/optimizations.json
"""
from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from bench import save_json
from bench.overhead import alternate, make_synthesizer, random_cifar, timed
from engine.data import FixedSteps, TensorLoader, random_resized_crop
from engine.trainer import TrainConfig, Trainer
from engine.utils import library_versions, optimizer_impl, resolve_device, seed_everything, synchronize
from kd.distillers import KD, Weights
from registry.models import get_model


def kd_trainer(args, device, tmp, teacher=None, **cfg) -> Trainer:
    seed_everything(0)
    teacher = teacher or get_model(args.teacher, num_classes=100)
    objective = KD(get_model(args.student, num_classes=100), teacher, T=20.0, weights=Weights(r=0.0, a=1.0))
    source = FixedSteps(TensorLoader(random_cifar(), args.batch, True, device), args.steps)
    config = TrainConfig(epochs=1, lr=0.05, save_dir=tmp, progress=False, **cfg)
    return Trainer(objective, source, None, config, device)


def per_step(trainer: Trainer):
    """One call: ``--steps`` training steps through the trainer."""
    return lambda: trainer.train_one_epoch(0)


def row(name: str, before: str, after: str, b: float, a: float, unit: str) -> dict:
    return {"optimisation": name, "before": before, "after": after, "before_ms": 1e3 * b, "after_ms": 1e3 * a,
            "speedup": b / a, "unit": unit}


def optimizer_rows(args, device) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {impl: kd_trainer(args, device, tmp, opt_impl=impl) for impl in ("loop", "foreach", "fused")}
        loop = per_step(trainers["loop"])
        for impl in ("foreach", "fused"):
            b, a = alternate(loop, per_step(trainers[impl]), args.repeats, device)
            rows.append(row("optimizer kernels: KD step SGD", "loop", impl, b / args.steps, a / args.steps, "step"))
    synths = {impl: make_synthesizer("fast_meta", args, device, opt_impl=impl) for impl in ("loop", "fused")}
    b, a = alternate(lambda: synths["loop"].synthesize(0), lambda: synths["fused"].synthesize(0), args.repeats, device)
    g = synths["loop"].cfg.g_steps
    rows.append(row(f"optimizer kernels: fast_meta round Adam (g_steps {g})", "loop", "fused", b / g, a / g,
                    "inner step"))
    return rows


def kernel_rows(args, device) -> list:
    """The optimiser step alone (gradients preset, 50 steps per call): SGD on the student, Adam
    on the generator (ngf 64, 2.3M parameters) plus a latent batch, loop vs fused."""
    from datafree.generator import Generator

    seed_everything(0)
    rows, reps = [], 50
    models = {"SGD": get_model(args.student, num_classes=100).to(device),
              "Adam": Generator(256, 64, 32, 3).to(device)}
    for kind, model in models.items():
        params = list(model.parameters())
        if kind == "Adam":
            params.append(torch.randn(args.syn_batch, 256, device=device, requires_grad=True))
        for q in params:
            q.grad = torch.randn_like(q)

        def stepper(impl):
            kw = optimizer_impl(impl, device)
            opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, **kw) if kind == "SGD"
                   else torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999), **kw))

            def run():
                for _ in range(reps):
                    opt.step()
            return run

        b, a = alternate(stepper("loop"), stepper("fused"), args.repeats, device)
        what = f"{args.student}, {len(params)} tensors" if kind == "SGD" else f"generator + z, {len(params)} tensors"
        rows.append(row(f"optimizer kernels: {kind} step alone ({what})", "loop", "fused", b / reps, a / reps, "step"))
    return rows


def hooks_row(args, device) -> dict:
    synth = make_synthesizer("cmi", args, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = kd_trainer(args, device, tmp, teacher=synth.teacher)

        def with_hooks(on: bool):
            def run():
                synth.set_hooks(on)
                trainer.train_one_epoch(0)
                synth.set_hooks(False)
            return run

        b, a = alternate(with_hooks(True), with_hooks(False), args.repeats, device)
    return row("hooks off in KD steps (CMI: BN statistics + feature means)", "hooks on (reference)", "off",
               b / args.steps, a / args.steps, "step")


def copy_row(args, device) -> dict:
    from datafree.fast_meta import copy_weights

    synth = make_synthesizer("fast_meta", args, device)
    g, fast = synth.generator, synth.fast_generator
    reps = 20

    def deep():
        for _ in range(reps):
            copy.deepcopy(g)

    def inplace():
        for _ in range(reps):
            copy_weights(fast, g)

    b, a = alternate(deep, inplace, args.repeats, device)
    return row("fast_meta G' per round", "copy.deepcopy(G)", "copy into persistent G'", b / reps, a / reps, "round")


def rrc_row(args, device) -> dict:
    import kornia.augmentation as K

    x = torch.rand(256, 3, 32, 32, device=device)
    kornia_rrc = torch.nn.Sequential(K.RandomResizedCrop((32, 32), scale=(0.25, 1.0)), K.RandomHorizontalFlip())
    reps = 20

    def theirs():
        for _ in range(reps):
            kornia_rrc(x)

    def ours():
        for _ in range(reps):
            y = random_resized_crop(x, (32, 32), (0.25, 1.0))
            torch.where(torch.rand(256, 1, 1, 1, device=device) < 0.5, y.flip(3), y)

    b, a = alternate(theirs, ours, args.repeats, device)
    return row("RandomResizedCrop + flip, batch 256 (CMI local view)", "kornia (box read-back per call)",
               "ours (grid_sample, no read-back)", b / reps, a / reps, "call")


def compile_row(args, device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        eager = kd_trainer(args, device, tmp)
        compiled = kd_trainer(args, device, tmp, compile=True)
        t_compile = timed(lambda: compiled.train_one_epoch(0), device)
        b, a = alternate(per_step(eager), per_step(compiled), args.repeats, device)
    r = row("torch.compile of the KD step's forward", "eager", "compiled", b / args.steps, a / args.steps, "step")
    r["compile_s"] = t_compile
    return r


def cuda_rows(args, device) -> list:
    """bf16 autocast and channels_last: KD step and fast_meta round, CUDA only."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = kd_trainer(args, device, tmp, amp="off", channels_last=False)
        fast = kd_trainer(args, device, tmp, amp="bf16", channels_last=True)
        b, a = alternate(per_step(fp32), per_step(fast), args.repeats, device)
    rows.append(row("KD step bf16 + channels_last", "fp32 NCHW", "bf16 NHWC", b / args.steps, a / args.steps, "step"))
    s0 = make_synthesizer("fast_meta", args, device, amp="off", channels_last=False)
    s1 = make_synthesizer("fast_meta", args, device, amp="bf16", channels_last=True)
    s1.teacher.to(memory_format=torch.channels_last)
    s1.student.to(memory_format=torch.channels_last)
    b, a = alternate(lambda: s0.synthesize(0), lambda: s1.synthesize(0), args.repeats, device)
    g = s0.cfg.g_steps
    rows.append(row("fast_meta round bf16 + channels_last", "fp32 NCHW", "bf16 NHWC", b / g, a / g, "inner step"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--syn_batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile row (about 1-2 min to compile on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = []
    for fn in (kernel_rows, optimizer_rows, hooks_row, copy_row, rrc_row) + (() if args.no_compile else (compile_row,)) \
            + ((cuda_rows,) if device.type == "cuda" else ()):
        out = fn(args, device)
        for r in out if isinstance(out, list) else [out]:
            rows.append(r)
            print(f"[optimizations] {r['optimisation']}: {r['before']} {r['before_ms']:.2f} ms -> {r['after']} "
                  f"{r['after_ms']:.2f} ms ({r['speedup']:.2f}x)", flush=True)
    synchronize(device)
    print(f"\nOptimisations, before -> after ({device}, teacher {args.teacher}, student {args.student}, batch "
          f"{args.batch}, synthesis batch {args.syn_batch}; median of {args.repeats}, warm-up excluded)\n")
    print("| optimisation | before | after | before (ms) | after (ms) | per | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimisation']} | {r['before']} | {r['after']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | "
              f"{r['unit']} | {r['speedup']:.2f}x |")
    if device.type != "cuda":
        print("\n(bf16 autocast and channels_last are CUDA paths: not measured on this device)")
    if any("compile_s" in r for r in rows):
        print(f"(torch.compile: first compiled epoch of {args.steps} steps took "
              f"{next(r['compile_s'] for r in rows if 'compile_s' in r):.1f} s, excluded above)")
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        save_json(args.json, {"rows": rows, "args": vars(args), "versions": versions, "device": str(device),
                              "timing": "device-synchronised; one warm-up call each excluded; median of repeats, "
                                        "before and after alternated"})
    return rows


if __name__ == "__main__":
    main()

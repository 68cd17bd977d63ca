"""Engine overhead: the same tensor work timed bare (a tight loop, no engine) and through the
engine, per job. A ratio near 1.0 means the engine adds nothing measurable.

Jobs (batch ``--batch``, CIFAR-shaped uint8 data of random pixels held on the device):

* ``teacher step``: crop/flip/normalise, forward, cross-entropy, backward, SGD step
  (engine: :class:`engine.trainer.Trainer` with :class:`engine.objective.CrossEntropyObjective`
  fed by :class:`engine.data.TensorLoader`);
* ``kd step``: the same with a frozen teacher and the KL loss at T = 20 (engine: the
  :class:`kd.distillers.KD` objective);
* ``fast_meta round``: one synthesis round (clone G, ``--g_steps`` inner Adam steps on the
  bn + oh + adv loss, FOMAML accumulation, meta step, BN-EMA update, pool) at batch
  ``--syn_batch`` (engine: :class:`datafree.fast_meta.FastMetaSynthesizer`).

Timings synchronise the device, exclude ``--warmup`` steps and take the median of
``--repeats`` windows of ``--steps`` steps, alternating bare and engine windows so drifts in
machine load hit both alike. The bare loop gets its batches made before the clock starts, while
the engine's time includes making them (indexing + augmentation), so the ratio is an upper
bound on what the engine adds.

    python -m bench.overhead
    python -m bench.overhead --teacher resnet20 --student resnet8 --json run/bench/overhead.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from bench import save_json
from engine.data import FixedSteps, TensorLoader
from engine.objective import CrossEntropyObjective
from engine.trainer import TrainConfig, Trainer
from engine.utils import library_versions, resolve_device, seed_everything, synchronize
from kd.distillers import KD
from kd.losses import kd_kl_div
from registry.datasets import TensorSplit, dataset_spec
from registry.models import get_model


def random_cifar(n: int = 4096) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.randint(0, 100, (n,), generator=g), dataset_spec("cifar100"))


def bare_window(step, loader_iter, n: int, device) -> float:
    batches = [next(loader_iter) for _ in range(n)]  # the engine's loader also yields ready batches
    synchronize(device)
    t = time.perf_counter()
    for x, y in batches:
        step(x, y)
    synchronize(device)
    return time.perf_counter() - t


def endless(loader):
    while True:
        yield from loader


def measure_job(name: str, args, device) -> dict:
    data = random_cifar()
    seed_everything(0)
    student = get_model(args.student if name == "kd step" else args.teacher, num_classes=100).to(device)
    teacher = get_model(args.teacher, num_classes=100).to(device).eval().requires_grad_(False) \
        if name == "kd step" else None
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def bare_step(x, y):
        if teacher is None:
            loss = F.cross_entropy(student(x), y)
        else:
            with torch.no_grad():
                t = teacher(x)
            loss = kd_kl_div(student(x), t, 20.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    student.train()
    it = endless(TensorLoader(data, args.batch, True, device))
    bare_window(bare_step, it, args.warmup, device)

    objective = CrossEntropyObjective(get_model(args.teacher, num_classes=100)) if teacher is None else \
        KD(get_model(args.student, num_classes=100), teacher, T=20.0, alpha=1.0, gamma=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=1, lr=0.05, save_dir=tmp, progress=False, log_every=args.log_every, amp=args.amp)
        source = FixedSteps(TensorLoader(data, args.batch, True, device), args.warmup)
        trainer = Trainer(objective, source, None, cfg, device)
        trainer.train_one_epoch(0)  # warm-up
        source.n = args.steps
        bare, engine = [], []
        for _ in range(args.repeats):
            bare.append(bare_window(bare_step, it, args.steps, device))
            engine.append(trainer.train_one_epoch(0)["train_time"])
    b, e = statistics.median(bare), statistics.median(engine)
    return {"job": name, "bare_ms_per_step": 1e3 * b / args.steps, "engine_ms_per_step": 1e3 * e / args.steps,
            "ratio": e / b}


def measure_fast_meta_round(args, device) -> dict:
    import copy

    from datafree import SynthesisConfig
    from datafree.fast_meta import FastMetaSynthesizer
    from datafree.losses import BNStatLoss, masked_adversarial_kl

    seed_everything(0)
    spec = dataset_spec("cifar100")
    teacher = get_model(args.teacher, num_classes=100).to(device).eval().requires_grad_(False)
    student = get_model(args.student, num_classes=100).to(device).eval()
    cfg = SynthesisConfig(num_classes=100, img_size=32, nc=3, mean=spec.mean, std=spec.std, batch_size=args.syn_batch,
                          g_steps=args.g_steps, lr_g=2e-3, lr_z=0.01, bn=10, oh=0.4, adv=1.1, bn_mmt=0.9, warmup=0)
    synth = FastMetaSynthesizer(teacher, student, cfg, device)

    # the bare loop: the same tensor work with its own generator, hooks and meta optimiser
    gen = copy.deepcopy(synth.generator)
    meta = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g * cfg.g_steps, betas=(0.5, 0.999))
    bn = BNStatLoss(teacher, cfg.bn_mmt)
    bn.set_enabled(False)
    pool = []

    def bare_round():
        student.requires_grad_(False)
        bn.set_enabled(True)
        fast = copy.deepcopy(gen).train()
        z = torch.randn(cfg.batch_size, cfg.nz, device=device, requires_grad=True)
        y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=device)
        opt = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_z}], lr=cfg.lr_g,
                               betas=(0.5, 0.999))
        meta.zero_grad(set_to_none=True)
        for _ in range(cfg.g_steps):
            x = fast(z)
            xa = synth.augment(x)
            t = teacher(xa)
            loss = (cfg.bn * bn.value() + cfg.oh * F.cross_entropy(t, y)
                    + cfg.adv * masked_adversarial_kl(student(xa), t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p, q in zip(gen.parameters(), fast.parameters()):
                p.grad = q.grad.clone() if p.grad is None else p.grad.add_(q.grad)
            opt.step()
        meta.step()
        bn.update_momentum()
        pool.append((x.detach() * 255).to(torch.uint8))
        bn.set_enabled(False)
        student.requires_grad_(True)

    def timed(fn):
        synchronize(device)
        t = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - t

    bare_round()
    synth.synthesize(0)
    bare, engine = [], []
    for _ in range(args.repeats):
        bare.append(timed(bare_round))
        engine.append(timed(lambda: synth.synthesize(0)))
    b, e = statistics.median(bare), statistics.median(engine)
    return {"job": f"fast_meta round (g_steps {cfg.g_steps}, batch {cfg.batch_size})",
            "bare_ms_per_step": 1e3 * b / cfg.g_steps, "engine_ms_per_step": 1e3 * e / cfg.g_steps, "ratio": e / b}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--log_every", type=int, default=50, help="the engine's default host-sync interval")
    p.add_argument("--syn_batch", type=int, default=64, help="synthesis batch of the fast_meta round")
    p.add_argument("--g_steps", type=int, default=5)
    p.add_argument("--no_synthesis", action="store_true", help="skip the fast_meta round")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = [measure_job(j, args, device) for j in ("teacher step", "kd step")]
    if not args.no_synthesis:
        rows.append(measure_fast_meta_round(args, device))
    print(f"\nEngine overhead ({device}, batch {args.batch}, teacher {args.teacher}, student {args.student}; "
          f"median of {args.repeats} x {args.steps} steps, {args.warmup} warm-up steps excluded)\n")
    print("| job | bare ms/step | engine ms/step | engine / bare |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['bare_ms_per_step']:.1f} | {r['engine_ms_per_step']:.1f} | {r['ratio']:.3f} |")
    print("\n(for the fast_meta round, ms per inner step = round time / g_steps)")
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        save_json(args.json, {"rows": rows, "args": vars(args), "versions": versions, "device": str(device)})
    return rows


if __name__ == "__main__":
    main()

"""Engine overhead: the same tensor work timed bare (a tight loop, no engine) and through the
engine, per job. A ratio near 1.0 means the engine adds nothing measurable.

Jobs (batch ``--batch``, CIFAR-shaped uint8 data of random pixels held on the device):

* ``teacher step``: crop/flip/normalise, forward, cross-entropy, backward, SGD step
  (engine: :class:`engine.trainer.Trainer` with :class:`engine.objective.CrossEntropyObjective`
  fed by :class:`engine.data.TensorLoader`);
* ``kd step``: the same with a frozen teacher and the KL loss at T = 20 (engine: the
  :class:`kd.distillers.KD` objective);
* ``<method> round`` for every data-free method: one synthesis round at batch ``--syn_batch``
  with the method's reference loss weights (:data:`ROUND_SETTINGS`), engine
  (``synthesizer.synthesize``) against the tight loops of :mod:`bench.bare`; reported per inner
  step (round time / g_steps);
* ``fast_meta epoch``: one round plus ``--kd_steps`` KD steps on pool batches (engine: the
  trainer over :class:`datafree.source.DataFreeSource`; evaluation and checkpoint writes excluded).

Both sides use the same optimiser kernels (``optimizer_impl('auto')``), so the ratio is the
engine's overhead alone; ``python -m bench.optimizations`` measures the kernels themselves.
Timings synchronise the device, exclude warm-up (``--warmup`` steps, or one call per round /
epoch job) and take the median of ``--repeats`` windows, alternating bare and engine windows so
drifts in machine load hit both alike. The bare step loop gets its batches made before the clock
starts, while the engine's time includes making them (indexing + augmentation), so the step
ratios are upper bounds on what the engine adds.

    python -m bench.overhead                                  # every job, about 10 minutes on 2 CPU cores
    python -m bench.overhead --jobs kd fast_meta epoch --json run/bench/overhead.json
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
from engine.utils import library_versions, optimizer_impl, resolve_device, seed_everything, synchronize
from kd.distillers import KD, Weights
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


def bare_kd_step(student, teacher, opt, x) -> None:
    """One KD step as a tight loop: frozen teacher, KL at T = 20, backward, optimiser step."""
    with torch.no_grad():
        t = teacher(x)
    loss = kd_kl_div(student(x), t, 20.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def endless(loader):
    while True:
        yield from loader


def measure_job(name: str, args, device) -> dict:
    data = random_cifar()
    seed_everything(0)
    student = get_model(args.student if name == "kd step" else args.teacher, num_classes=100).to(device)
    teacher = get_model(args.teacher, num_classes=100).to(device).eval().requires_grad_(False) \
        if name == "kd step" else None
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                          **optimizer_impl("auto", device))  # the engine's kernel: the ratio is overhead only

    def bare_step(x, y):
        if teacher is not None:
            return bare_kd_step(student, teacher, opt, x)
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    student.train()
    it = endless(TensorLoader(data, args.batch, True, device))
    bare_window(bare_step, it, args.warmup, device)

    objective = CrossEntropyObjective(get_model(args.teacher, num_classes=100)) if teacher is None else \
        KD(get_model(args.student, num_classes=100), teacher, T=20.0, weights=Weights(r=0.0, a=1.0))
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


# per-method synthesis settings of the benchmark: each method's reference loss weights; g_steps
# is kept small (every inner step does the same work, so ms per inner step is what matters)
ROUND_SETTINGS = {
    "fast_meta": dict(g_steps=5, lr_g=2e-3, lr_z=0.01, bn=10, oh=0.4, adv=1.1, bn_mmt=0.9),
    "fast": dict(g_steps=5, lr_g=2e-3, lr_z=0.01, bn=10, oh=0.4, adv=1.1, bn_mmt=0.9),
    "deepinv": dict(g_steps=10, lr_g=0.1, bn=10, oh=1, adv=1, bn_mmt=0.0),
    "cmi": dict(g_steps=5, lr_g=1e-3, bn=1, oh=1, adv=0.5, cr=0.8, cr_T=0.2, bn_mmt=0.0),
    "dafl": dict(g_steps=5, lr_g=1e-3, oh=1, act=1e-3, balance=20, nz=512, bn=0, adv=0, bn_mmt=0.0),
    "zskt": dict(g_steps=5, lr_g=1e-3, adv=1, bn=0, oh=0, bn_mmt=0.0),
    "dfad": dict(g_steps=5, lr_g=1e-3, adv=1, bn=0, oh=0, bn_mmt=0.0),
    "dfq": dict(g_steps=5, lr_g=1e-3, adv=1, bn=1, oh=1, balance=20, bn_mmt=0.0),
}


def timed(fn, device) -> float:
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def alternate(bare_fn, engine_fn, repeats: int, device) -> tuple:
    """One warm-up call each (excluded), then ``repeats`` alternated timings; medians."""
    bare_fn()
    engine_fn()
    bare, engine = [], []
    for _ in range(repeats):
        bare.append(timed(bare_fn, device))
        engine.append(timed(engine_fn, device))
    return statistics.median(bare), statistics.median(engine)


def make_synthesizer(method: str, args, device, **over):
    """The engine's synthesizer for ``method`` on fresh CIFAR-100-sized models (``args.teacher``,
    ``args.student``, ``args.syn_batch``), with the method's :data:`ROUND_SETTINGS` updated by ``over``."""
    from datafree import SYNTHESIZERS, SynthesisConfig

    seed_everything(0)
    spec = dataset_spec("cifar100")
    teacher = get_model(args.teacher, num_classes=100).to(device).eval().requires_grad_(False)
    student = get_model(args.student, num_classes=100).to(device).eval()
    cfg = SynthesisConfig(num_classes=100, img_size=32, nc=3, mean=spec.mean, std=spec.std, batch_size=args.syn_batch,
                          warmup=0, **{**ROUND_SETTINGS[method], **over})
    return SYNTHESIZERS[method](teacher, student, cfg, device)


def synthesis_pair(method: str, args, device, student_for_bare=None):
    """The engine's synthesizer and the matching bare round (:mod:`bench.bare`)."""
    from bench import bare as B

    over = {"n_neg": args.n_neg, "ngf": args.ngf, **({"g_steps": args.g_steps} if args.g_steps else {})}
    synth = make_synthesizer(method, args, device, **over)
    teacher, student, cfg = synth.teacher, synth.student, synth.cfg
    s_bare = student_for_bare if student_for_bare is not None else student
    if method == "fast_meta":
        bare = B.BareFastMeta(teacher, s_bare, cfg, device, synth.generator)
    elif method == "fast":
        bare = B.BareFast(teacher, s_bare, cfg, device, synth.generator)
    elif method == "deepinv":
        bare = B.BareDeepInv(teacher, s_bare, cfg, device)
    elif method == "cmi":
        fill = cfg.n_neg  # a bank with enough cached features for a full draw of negatives
        synth.bank.add(torch.randn(fill, synth.bank.data.shape[1], device=device))
        bare = B.BareCMI(teacher, s_bare, cfg, device, fill)
    else:
        bare = B.BareGenerative(teacher, s_bare, cfg, device, l1=method == "dfad")
    return synth, bare, cfg


def measure_round(method: str, args, device) -> dict:
    synth, bare, cfg = synthesis_pair(method, args, device)
    b, e = alternate(bare, lambda: synth.synthesize(0), args.repeats, device)
    return {"job": f"{method} round (g_steps {cfg.g_steps}, batch {cfg.batch_size})",
            "bare_ms_per_step": 1e3 * b / cfg.g_steps, "engine_ms_per_step": 1e3 * e / cfg.g_steps, "ratio": e / b,
            "unit": "inner step"}


def measure_fast_meta_epoch(args, device) -> dict:
    """One data-free epoch: a fast_meta round, then ``--kd_steps`` KD steps on pool batches
    (engine: :class:`engine.trainer.Trainer` over :class:`datafree.source.DataFreeSource`;
    evaluation and checkpoint writes excluded on both sides)."""
    from datafree.source import DataFreeSource

    seed_everything(0)
    bare_student = get_model(args.student, num_classes=100).to(device)
    synth, bare, cfg = synthesis_pair("fast_meta", args, device, student_for_bare=bare_student)
    bare_student.load_state_dict(synth.student.state_dict())
    opt = torch.optim.SGD(bare_student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                          **optimizer_impl("auto", device))
    teacher, k = synth.teacher, args.kd_steps

    def bare_epoch():
        bare()
        pool = torch.cat(bare.pool)
        bare_student.train()
        for _ in range(k):
            bare_kd_step(bare_student, teacher, opt,
                         bare.augment(pool[torch.randint(len(pool), (args.batch,), device=device)]))

    with tempfile.TemporaryDirectory() as tmp:
        source = DataFreeSource(synth, args.batch, k, k, warmup=0)
        objective = KD(synth.student, teacher, T=20.0, weights=Weights(r=0.0, a=1.0))
        trainer = Trainer(objective, source, None, TrainConfig(epochs=1, lr=0.1, weight_decay=1e-4, save_dir=tmp,
                                                               progress=False, amp=args.amp), device)
        b, e = alternate(bare_epoch, lambda: trainer.train_one_epoch(0), args.repeats, device)
    return {"job": f"fast_meta epoch (1 round, g_steps {cfg.g_steps} + {k} KD steps of batch {args.batch})",
            "bare_ms_per_step": 1e3 * b, "engine_ms_per_step": 1e3 * e, "ratio": e / b, "unit": "epoch"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--log_every", type=int, default=50, help="the engine's default host-sync interval")
    p.add_argument("--syn_batch", type=int, default=64, help="synthesis batch of the rounds")
    p.add_argument("--ngf", type=int, default=64, help="generator width")
    p.add_argument("--g_steps", type=int, default=None, help="override every method's g_steps (smoke runs)")
    p.add_argument("--n_neg", type=int, default=4096, help="CMI negatives per step (the reference's 4096)")
    p.add_argument("--kd_steps", type=int, default=20, help="KD steps in the fast_meta epoch")
    p.add_argument("--jobs", nargs="+", default=None,
                   help=f"subset of: teacher kd {' '.join(ROUND_SETTINGS)} epoch (default all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    jobs = args.jobs or ["teacher", "kd", *ROUND_SETTINGS, "epoch"]
    valid = ["teacher", "kd", *ROUND_SETTINGS, "epoch"]
    if any(j not in valid for j in jobs):
        raise SystemExit(f"unknown job(s) {[j for j in jobs if j not in valid]}; valid: {' '.join(valid)}")
    rows = []
    for j in jobs:
        if j in ("teacher", "kd"):
            rows.append(measure_job(f"{j} step", args, device))
        elif j == "epoch":
            rows.append(measure_fast_meta_epoch(args, device))
        else:
            rows.append(measure_round(j, args, device))
        r = rows[-1]
        print(f"[overhead] {r['job']}: bare {r['bare_ms_per_step']:.1f} ms, engine {r['engine_ms_per_step']:.1f} ms, "
              f"ratio {r['ratio']:.3f}", flush=True)
    print(f"\nEngine overhead ({device}, batch {args.batch}, teacher {args.teacher}, student {args.student}; "
          f"median of {args.repeats} x {args.steps} steps, {args.warmup} warm-up steps excluded)\n")
    print("| job | bare (ms) | engine (ms) | per | engine / bare |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['bare_ms_per_step']:.1f} | {r['engine_ms_per_step']:.1f} | {r.get('unit', 'step')} | "
              f"{r['ratio']:.3f} |")
    print("\n(rounds: ms per inner step = round time / g_steps; epoch: evaluation and checkpoint writes excluded)")
    versions = library_versions()
    print(f"\n{versions}")
    if args.json:
        save_json(args.json, {"rows": rows, "args": vars(args), "versions": versions, "device": str(device)})
    return rows


if __name__ == "__main__":
    main()

"""KD step speed per method: the engine's step against a bare, hand-written step of the same method.

For every registered distiller (or ``--methods``) on one fixed teacher/student pair (default
ResNet-56 -> ResNet-20, CIFAR-100 shapes, batch 64, random normalised pixels made before the
clock starts, the method's default weights and options):

* **engine**: :class:`engine.trainer.Trainer` over the distiller (its taps, its named-loss dict,
  the trainer's weighting, loss bookkeeping and step), timed by the trainer's own epoch clock;
* **bare**: a tight loop written out by hand: plain forward hooks that store the tapped tensors
  in a list, the teacher's forward under ``no_grad``, the student's forward, ``r*CE + a*KD`` by
  :func:`kd.losses.kd_kl_div`, the method's loss terms, ``backward``, the same SGD kernel. The
  loss terms themselves are the distiller's (``method_losses``), so the ratio measures what the
  engine adds around them. Methods with a step of their own (several peers, rotated views,
  augmented views: those overriding ``forward``) run that step in the bare loop, so their ratio
  is the trainer's overhead alone.

Both sides step SGD (momentum 0.9, weight decay 5e-4, the engine's kernel) at lr 0, so the
weights stay as built and every window times the same work. Each figure is the median of ``--repeats`` windows of ``--steps`` steps after ``--warmup`` steps,
engine and bare windows alternated; every window synchronises the device. Reported: ms per step
and images/s for both, and engine/bare (the goal is <= 1.10 for every method).

    python -m bench.kd                                   # every method, ~10 min on 2 CPU cores
    python -m bench.kd --methods kd crd dkd --json run/bench/kd.json
    python -m bench.kd --teacher resnet32x4 --student resnet8x4 --batch 64   # RepDistiller's pair (GPU)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from bench import save_json
from engine.data import FixedSteps
from engine.hooks import parse_tap, resolve_module
from engine.trainer import TrainConfig, Trainer
from engine.utils import library_versions, optimizer_impl, resolve_device, seed_everything, synchronize
from kd.distillers import DataInfo, Distiller, Outputs, get_distiller_class, list_distillers
from kd.losses import kd_kl_div
from registry.datasets import dataset_spec
from registry.models import get_model

# The optimiser runs its full update at lr 0 (same kernels, same arithmetic), so the weights stay
# put: an untrained pair on random pixels would otherwise drive some losses (CC's unbounded
# products, CRD's shifting memory) to overflow within a few windows, which says nothing about speed.
LR = 0.0
# options a method needs to be built at all (no reference default exists)
BENCH_OPTIONS: Dict[str, dict] = {"triplet": {"triplet_margin": 0.2}}


@torch.no_grad()
def calibrated(model, info: DataInfo, device):
    """An untrained network whose BatchNorm running statistics are those of the benchmark's
    inputs (a few train-mode forwards), so its eval-mode features have a trained net's scale
    instead of growing with depth; then in eval mode."""
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(3):
        model(torch.randn(32, info.in_chans, info.image_size, info.image_size, generator=g).to(device))
    return model.eval()


def make_distiller(method: str, teacher_name: str, student_name: str, info: DataInfo, device, tmp: str) -> Distiller:
    """The method with its default weights and options on a fresh pair (same seed every time)."""
    cls = get_distiller_class(method)
    seed_everything(0)
    teacher = calibrated(get_model(teacher_name, num_classes=info.num_classes).to(device), info, device)
    student = get_model(student_name, num_classes=info.num_classes).to(device)
    opts = dict(BENCH_OPTIONS.get(method, {}))
    names = {f.name for f in dataclasses.fields(cls.Options)}
    if "extra_teachers" in names:  # multiteacher: a second (random) teacher saved to disk
        path = os.path.join(tmp, f"{teacher_name}.pth")
        torch.save(calibrated(get_model(teacher_name, num_classes=info.num_classes), info, "cpu").state_dict(), path)
        opts["extra_teachers"] = [f"{teacher_name}={path}"]
    d = cls(student, teacher if cls.needs_teacher else None, info, T=4.0, options=cls.Options(**opts))
    return d.to(device)


class BareTaps:
    """Hand-written hooks: the tapped tensors of the last forward, by tap name."""

    def __init__(self, model, specs: Dict[str, str]):
        self.store: Dict[str, torch.Tensor] = {}
        for name, spec in specs.items():
            path, side = parse_tap(spec)
            resolve_module(model, path).register_forward_hook(
                (lambda n, s: (lambda m, i, o: self.store.__setitem__(n, i[0] if s == "in" else o)))(name, side))


def bare_step_fn(d: Distiller, opt):
    """A hand-written training step for ``d`` (its hooks replaced by :class:`BareTaps`)."""
    custom = type(d).forward is not Distiller.forward
    if custom:
        def step(batch):
            losses = d(batch)
            loss = sum(v * d.loss_weight(k) for k, v in losses.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    s_specs = d.s_hooks.specs if d.s_hooks is not None else {}
    t_specs = d.t_hooks.specs if d.t_hooks is not None else {}
    for hooks in (d.s_hooks, d.t_hooks):
        if hooks is not None:
            hooks.remove()
    s_taps, t_taps = BareTaps(d.student, s_specs), (BareTaps(d.teacher, t_specs) if d.teacher is not None else None)
    r, a, b, T = d.w.r, d.w.a, d.w.b, d.T
    uses_teacher = d.runs_teacher()  # e.g. AB's and FSP's main stage at -a 0 need no teacher
    b = b if d.has_main_loss() else 0.0
    # a method's own teacher forward (OFD's BN guard) or CE/KD terms (multiteacher's several
    # teachers) are part of its work: the bare loop calls them too
    own_teacher = type(d).teacher_forward is not Distiller.teacher_forward
    own_base = type(d).base_losses is not Distiller.base_losses

    def step(batch):
        x, y = batch[0], batch[1]
        idx = batch[2] if len(batch) > 2 else None
        t_logits = None
        if uses_teacher and own_teacher:
            t_logits = d.teacher_forward(x)[0]
        elif uses_teacher:
            with torch.no_grad():
                t_logits = d.teacher(x)
        s_logits = d.student(x)
        out = Outputs(x, y, idx, s_logits, t_logits, s_taps.store, t_taps.store if t_taps else {},
                      d.s_groups, d.t_groups)
        loss = s_logits.new_zeros(())
        if own_base:
            for k, v in d.base_losses(out).items():
                loss = loss + d.loss_weight(k) * v
        else:
            if r:
                loss = loss + r * F.cross_entropy(s_logits, y)
            if a and t_logits is not None:
                loss = loss + a * kd_kl_div(s_logits, t_logits, T)
        if b:
            for v in d.method_losses(out).values():
                loss = loss + b * v
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def make_batches(info: DataInfo, batch: int, n: int, device, with_index: bool) -> List[tuple]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        idx = torch.randint(0, info.num_samples, (batch,), generator=g)
        x = torch.randn(batch, info.in_chans, info.image_size, info.image_size, generator=g)
        y = info.labels[idx]
        out.append(tuple(t.to(device) for t in ((x, y, idx) if with_index else (x, y))))
    return out


def window(step, batches, device) -> float:
    synchronize(device)
    t = time.perf_counter()
    for bt in batches:
        step(bt)
    synchronize(device)
    return time.perf_counter() - t


def measure(method: str, args, device, info: DataInfo, tmp: str) -> dict:
    cls = get_distiller_class(method)
    batches = make_batches(info, args.batch, args.steps, device, cls.needs_index)
    bare_d = make_distiller(method, args.teacher, args.student, info, device, tmp).freeze()
    bare_d.train()
    opt = torch.optim.SGD(list(bare_d.trainable_parameters()), lr=LR, momentum=0.9, weight_decay=5e-4,
                          **optimizer_impl("auto", device))
    bare = bare_step_fn(bare_d, opt)
    engine_d = make_distiller(method, args.teacher, args.student, info, device, tmp)
    cfg = TrainConfig(epochs=1, lr=LR, weight_decay=5e-4, schedule="constant", save_dir=tmp, progress=False,
                      log_every=10 ** 9, amp="off")
    source = FixedSteps(batches, args.warmup)
    trainer = Trainer(engine_d, source, None, cfg, device)
    trainer.train_one_epoch(0)
    window(bare, batches[:args.warmup], device)
    source.n = args.steps
    b_times, e_times = [], []
    for _ in range(args.repeats):
        b_times.append(window(bare, batches, device))
        e_times.append(trainer.train_one_epoch(0)["train_time"])
    b, e = statistics.median(b_times), statistics.median(e_times)
    return {"method": method, "bare_ms": 1e3 * b / args.steps, "engine_ms": 1e3 * e / args.steps,
            "bare_img_s": args.batch * args.steps / b, "engine_img_s": args.batch * args.steps / e, "ratio": e / b,
            "own_step": type(engine_d).forward is not Distiller.forward}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered distiller")
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num_classes", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures (with versions) to this file")
    return ap


def main(argv: Optional[list] = None) -> dict:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    methods = [get_distiller_class(m).name for m in (args.methods or list_distillers())]
    spec = dataset_spec("cifar100")
    n = 50000
    info = DataInfo(num_classes=args.num_classes, in_chans=3, image_size=32, mean=spec.mean, std=spec.std,
                    num_samples=n, labels=torch.randint(0, args.num_classes, (n,),
                                                        generator=torch.Generator().manual_seed(0)))
    rows = []
    print(f"KD step, {args.teacher} -> {args.student}, batch {args.batch}, device {device}, "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'method':<14}{'bare ms':>10}{'engine ms':>11}{'bare img/s':>12}{'engine img/s':>14}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            row = measure(m, args, device, info, tmp)
            rows.append(row)
            print(f"{m:<14}{row['bare_ms']:>10.1f}{row['engine_ms']:>11.1f}{row['bare_img_s']:>12.0f}"
                  f"{row['engine_img_s']:>14.0f}{row['ratio']:>8.3f}" + ("  (own step)" if row["own_step"] else ""),
                  flush=True)
    worst = max(rows, key=lambda r: r["ratio"])
    print(f"largest engine/bare ratio: {worst['ratio']:.3f} ({worst['method']})")
    payload = {"rows": rows, "args": vars(args), "device": str(device), "versions": library_versions()}
    if args.json:
        save_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])

"""The paper's accuracy-versus-time comparison (Fang et al., AAAI-22, "Up to 100x Faster Data-free
Knowledge Distillation", Table 1), as one command.

Protocols (every setting is in the tables below, with where it comes from):

* ``cifar10``, ``cifar100``: the published GPU protocol. The five teacher/student pairs of
  Table 1 with Fast-2/5/10 as ``scripts/fast_cifar.sh`` runs them (batch 256, lr 0.2, 220 epochs
  with 20 warm-up, kd_steps = ep_steps = 400, T 20, bn 10, bn_mmt 0.9, reset_l0 1, is_maml 1,
  per-pair adv/oh), the baselines as ``scripts/baselines_cifar.sh`` runs them (DeepInv-1k,
  CMI-200, DAFL, ZSKT, DFAD, DFQ), plus ``kd_real`` (KD on the real training images) and
  ``student`` (the student alone on real labels) with the same KD budget.
* ``mnist``: a CPU-sized version (real MNIST, LeNet-5-BN teacher trained here, LeNet-5-half-BN
  student), every data-free method at its reference setting scaled to 200 KD steps.

Every method of a protocol gets the same KD budget: ``(epochs - warmup) * steps`` student steps of
batch ``batch`` (methods without a warm-up run ``epochs - warmup`` epochs), cosine schedule, KL
at the method's T. Student accuracy is on the real test set; synthesis time is measured by the
engine (see TIMING_NOTE). Output, under ``run/reproduce/<protocol>[-<dataset>]/``: ``table.md``
(the paper's form: a column pair per teacher/student pair, last (best) accuracy and times, and a
synthesis speed-up column), ``plot.png`` (best accuracy against synthesis time) and
``results.json`` (every run, the medians, settings, command line, versions, device).

Teachers: ``--teacher_dir DIR`` (``DIR/<dataset>_<teacher>.pth`` or
``DIR/<dataset>_<teacher>/best.pt``), else ``run/teachers/<dataset>_<teacher>/best.pt``, else one
trained earlier by this command under ``<out>/teachers/``, else one is trained now with
``cifar100.py``'s recipe (CRD, 240 epochs) scaled by ``--budget``.

    python -m bench.reproduce --protocol mnist                       # ~20 min on 2 CPU cores
    python -m bench.reproduce --protocol cifar100 --data_root DATA   # full GPU protocol (days)
    python -m bench.reproduce --protocol cifar10 --budget 0.05 --repeats 3 --pairs wrn40_2:wrn16_1
    python -m bench.reproduce --protocol cifar10 --dataset digits --pair resnet8:wrn16_1 --budget 0.02 \\
        --steps 4 --batch 32 --repeats 3                        # offline, about 4 min on 2 CPU cores
    python -m bench.reproduce --protocol cifar100 --dry_run          # print every run's command line
    python -m bench.reproduce --protocol kd_mnist                    # the data-driven KD zoo (bench/reproduce_kd.py)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cifar100
from bench import save_json
from datafree import SYNTHESIZERS
from engine.checkpoint import load_weights
from engine.data import FixedSteps, build_loader
from engine.logger import RunLogger
from engine.objective import CrossEntropyObjective
from engine.trainer import DivergenceError, TrainConfig, Trainer, evaluate
from engine.utils import library_versions, resolve_device, seed_everything, synchronize
from kd import faster_data_free_kd as dfkd
from kd.distillers import KD, Weights
from registry.datasets import dataset_spec, list_datasets
from registry.models import canonical_name, get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCES = ("kd_real", "student")  # the real-data rows: not data-free, no synthesis time


@dataclass(frozen=True)
class Method:
    """One row of the table: a run of ``kd/faster_data_free_kd.py --method <engine>`` (or a
    real-data reference) with its reference settings. ``kd_steps`` student steps follow each
    synthesis round, ``ep_steps`` per epoch; ``warmup`` says whether the method runs the
    protocol's synthesis-only warm-up epochs; ``per_pair`` names flags whose values come from
    the teacher/student pair (fast_cifar.sh's adv and oh)."""

    label: str
    engine: str
    g_steps: int = 0
    kd_steps: int = 0
    ep_steps: int = 0
    lr: float = 0.1
    T: Optional[float] = 20.0  # None: the method's published student loss (generative: KL T=1, DFAD L1)
    warmup: bool = False
    flags: Tuple[str, ...] = ()
    per_pair: Tuple[str, ...] = ()
    default: bool = True  # part of the protocol when --methods is not given


@dataclass(frozen=True)
class Pair:
    """A teacher/student pair; ``adv`` and ``oh`` are fast_cifar.sh's per-pair weights (the
    defaults are its WRN values, also the README's single-run command)."""

    teacher: str
    student: str
    adv: float = 1.1
    oh: float = 0.4

    @property
    def name(self) -> str:
        return f"{self.teacher}:{self.student}"


@dataclass(frozen=True)
class Protocol:
    """Dataset, pairs, methods (in table order) and the shared budget of one protocol.
    ``epochs``/``warmup``: a warm-up method's total and warm-up epochs; ``steps``: KD steps per
    epoch of the real-data references (the data-free methods use their own ``ep_steps`` unless
    ``--steps`` is given); ``teacher``: cifar100.py settings for a teacher trained here
    (``epochs`` and ``milestones`` are scaled by ``--budget``)."""

    dataset: str
    pairs: Tuple[Pair, ...]
    methods: Dict[str, Method]
    epochs: int
    warmup: int
    steps: int
    batch: int
    teacher: Dict[str, object]
    common: Tuple[str, ...] = ()  # flags every data-free run gets
    aliases: Optional[Dict[str, Tuple[str, ...]]] = None
    data_root: str = "./data/torchdata"
    teacher_is_default_recipe: bool = True  # a full-budget teacher may go to run/teachers/


def _references(lr: float) -> Dict[str, Method]:
    """KD on real images (labels unused, the data-free runs' loss) and the student alone."""
    return {"kd_real": Method("KD (real data)", "kd_real", lr=lr),
            "student": Method("student alone (real labels)", "student", lr=lr)}


# ---- CIFAR-10 / CIFAR-100: Table 1 of the paper, with the repo's scripts' settings -----------
# Pairs, adv and oh: scripts/fast_cifar.sh PAIRS (= Fast-Datafree scripts/fast_cifar.sh).
CIFAR_PAIRS = (
    Pair("resnet34", "resnet18", adv=1.33, oh=0.5),
    Pair("vgg11", "resnet18", adv=1.0, oh=0.5),
    Pair("wrn40_2", "wrn16_1", adv=1.1, oh=0.4),
    Pair("wrn40_2", "wrn40_1", adv=1.1, oh=0.4),
    Pair("wrn40_2", "wrn16_2", adv=1.1, oh=0.4),
)
# Fast-k and the baselines: the recipe files (recipes/*_cifar*.yaml, which scripts/fast_cifar.sh and
# scripts/baselines_cifar.sh pass as --config); each file names the published command line it holds.
# The protocol sets epochs, warm-up and batch itself; the pair gives fast_meta's adv and oh.
_PROTOCOL_KEYS = {"method", "batch_size", "lr", "epochs", "warmup", "kd_steps", "ep_steps", "T", "g_steps"}


def from_recipe(label: str, name: str, per_pair: Tuple[str, ...] = (), default: bool = True) -> Method:
    """A table row run with the settings of ``recipes/<name>.yaml``."""
    from engine.recipes import read_recipe

    r = read_recipe(name)
    flags = tuple(x for k, v in r.items() if k not in _PROTOCOL_KEYS and k not in per_pair
                  for x in (f"--{k}", str(v)))
    return Method(label, r["method"], g_steps=r["g_steps"], kd_steps=r["kd_steps"], ep_steps=r["ep_steps"],
                  lr=r["lr"], T=r.get("T"), warmup=r.get("warmup", 0) > 0, flags=flags, per_pair=per_pair,
                  default=default)


# deepinv_fast / cmi_fast are the scripts' cheap variants, not in Table 1, so only run when named
# in --methods.
CIFAR_METHODS: Dict[str, Method] = {
    **_references(0.1),  # lr 0.1: the baselines' student lr (the paper's KD/student rows are not Fast's)
    "deepinv": from_recipe("DeepInv-1k", "deepinv_cifar"),
    "cmi": from_recipe("CMI-200", "cmi_cifar"),
    "dafl": from_recipe("DAFL", "dafl_cifar"),
    "zskt": from_recipe("ZSKT", "zskt_cifar"),
    "dfad": from_recipe("DFAD", "dfad_cifar"),
    "dfq": from_recipe("DFQ", "dfq_cifar"),
    "deepinv_fast": from_recipe("DeepInv-10 (lr_g 1)", "deepinv_fast_cifar", default=False),
    "cmi_fast": from_recipe("CMI-5 (no contrast)", "cmi_fast_cifar", default=False),
    "fast2": from_recipe("Fast-2", "fast_meta_cifar_g2", per_pair=("adv", "oh")),
    "fast5": from_recipe("Fast-5", "fast_meta_cifar", per_pair=("adv", "oh")),
    "fast10": from_recipe("Fast-10", "fast_meta_cifar_g10", per_pair=("adv", "oh")),
}
# A teacher missing from disk: cifar100.py's default (CRD / RepDistiller) recipe, whose epochs and
# lr milestones --budget scales; lr stays cifar100.py's (0.05, 0.01 for MobileNetV2/ShuffleNet).
CIFAR_TEACHER = {"epochs": 240, "schedule": "multistep", "milestones": (150, 180, 210)}
_CIFAR = dict(pairs=CIFAR_PAIRS, methods=CIFAR_METHODS, epochs=220, warmup=20, steps=400, batch=256,
              teacher=CIFAR_TEACHER, aliases={"fast_meta": ("fast2", "fast5", "fast10")})

# ---- MNIST: a CPU-sized version ------------------------------------------------------------
# The reference settings scaled to 40 KD steps per epoch: pool methods run 2 rounds per epoch
# (kd_steps 20 of 40), generative ones their own KD-steps-per-G-step ratio (5, or 10 for DFQ);
# every generator at half width (ngf 32, in `common`).
# Short runs: no generator reset (the CIFAR recipe's reset_l0 1, which recipes/fast_meta_cifar.yaml
# would otherwise fill in; bn_mmt 0.9 is in the protocol's common flags).
_MNIST_FAST = ("--reset_l0", "0", "--reset_bn", "0")
MNIST_METHODS: Dict[str, Method] = {
    "fast_meta": Method("Fast-5 (fast_meta)", "fast_meta", g_steps=5, kd_steps=20, ep_steps=40, warmup=True,
                        flags=("--lr_g", "3e-3", "--lr_z", "0.01", "--adv", "1.0", "--bn", "10", "--oh", "0.5")
                        + _MNIST_FAST),
    "fast": Method("fast (no meta)", "fast", g_steps=5, kd_steps=20, ep_steps=40, warmup=True,
                   flags=("--lr_g", "3e-3", "--lr_z", "0.01", "--adv", "1.0", "--bn", "10", "--oh", "0.5")
                   + _MNIST_FAST),
    "deepinv": Method("DeepInv-1k", "deepinv", g_steps=1000, kd_steps=20, ep_steps=40, warmup=True,
                      flags=("--lr_g", "0.1", "--adv", "1", "--bn", "10", "--oh", "1")),
    "cmi": Method("CMI-100", "cmi", g_steps=100, kd_steps=20, ep_steps=40, warmup=True,
                  flags=("--lr_g", "1e-3", "--adv", "0.5", "--bn", "1", "--oh", "1", "--cr", "0.8", "--cr_T", "0.2")),
    "dafl": Method("DAFL", "dafl", g_steps=1, kd_steps=5, ep_steps=40, warmup=True, T=None,
                   flags=("--lr_g", "1e-3", "--oh", "1", "--act", "0.001", "--balance", "20")),
    "zskt": Method("ZSKT", "zskt", g_steps=1, kd_steps=5, ep_steps=40, warmup=True, T=None,
                   flags=("--lr_g", "1e-3", "--adv", "1")),
    "dfad": Method("DFAD", "dfad", g_steps=1, kd_steps=5, ep_steps=40, warmup=True, T=None,
                   flags=("--lr_g", "1e-3", "--adv", "1")),
    "dfq": Method("DFQ", "dfq", g_steps=1, kd_steps=10, ep_steps=40, warmup=True, T=None,
                  flags=("--lr_g", "1e-3", "--adv", "1", "--bn", "1", "--oh", "1", "--balance", "20")),
    **_references(0.1),
}

PROTOCOLS: Dict[str, Protocol] = {
    "cifar10": Protocol(dataset="cifar10", **_CIFAR),
    "cifar100": Protocol(dataset="cifar100", **_CIFAR),
    "mnist": Protocol(dataset="mnist", pairs=(Pair("lenet5_bn", "lenet5_half_bn"),), methods=MNIST_METHODS,
                      epochs=6, warmup=1, steps=40, batch=128, common=("--bn_mmt", "0.9", "--ngf", "32"),
                      teacher={"epochs": 1, "lr": 0.05, "schedule": "cosine"},
                      data_root=os.path.join(REPO, "..", "shared", "data"), teacher_is_default_recipe=False),
}

TIMING_NOTE = (
    "Timing: wall-clock seconds, the device synchronised before every clock read. 'total' is the "
    "trainer's whole run: every epoch summed, the first epoch and the synthesis-only warm-up epochs "
    "included (nothing is discarded as warm-up), each epoch's synthesis, KD steps and test-set "
    "evaluation; it leaves out process start, model construction, teacher loading and evaluation and "
    "checkpoint writing (results.json's time_wall, per run, includes all of those). 'synthesis' is the "
    "time inside synthesize() (every generator/latent/image step and meta-update) plus, for the "
    "generative methods (DAFL, ZSKT, DFAD, DFQ), the generator draws that feed the KD steps. "
    "All runs share one process, one after the other: one-time costs (lazy imports, kernel selection "
    "and autotuning caches) fall on the first run that meets them, so prefer --repeats 3 or more. "
    "Times and accuracies are medians over the seeds.")


# ---- settings resolution ------------------------------------------------------------------
def scaled(n: float, factor: float, minimum: int = 1) -> int:
    return max(minimum, int(round(n * factor)))


def select_pairs(p: Protocol, args) -> Tuple[Pair, ...]:
    """The protocol's pairs, a ``--pairs`` subset, or the ``--pair T:S`` escape hatch (adv/oh
    from a protocol pair with the same teacher, else Pair's defaults)."""
    if args.pair:
        teacher, _, student = args.pair.partition(":")
        try:
            teacher, student = canonical_name(teacher), canonical_name(student)
        except KeyError as e:
            raise SystemExit(f"--pair {args.pair}: {e.args[0]}") from None
        same = next((q for q in p.pairs if q.teacher == teacher), Pair(teacher, student))
        return (Pair(teacher, student, same.adv, same.oh),)
    if not args.pairs:
        return p.pairs
    valid = {q.name: q for q in p.pairs}
    unknown = [n for n in args.pairs if n not in valid]
    if unknown:
        raise SystemExit(f"unknown pair(s) {unknown} for protocol {args.protocol}; valid: {', '.join(valid)} "
                         f"(or --pair TEACHER:STUDENT for any other)")
    return tuple(valid[n] for n in dict.fromkeys(args.pairs))


def select_methods(p: Protocol, names: Optional[Sequence[str]], protocol: str) -> List[str]:
    """Method keys in table order: the protocol's defaults, or ``names`` (aliases expanded)."""
    if not names:
        return [k for k, m in p.methods.items() if m.default]
    aliases = p.aliases or {}
    unknown = [n for n in names if n not in p.methods and n not in aliases]
    if unknown:
        valid = list(p.methods) + [f"{a} (= {' '.join(v)})" for a, v in aliases.items()]
        raise SystemExit(f"unknown method(s) {unknown} for protocol {protocol}; valid: {', '.join(valid)}")
    wanted = {k for n in names for k in aliases.get(n, (n,))}
    return [k for k in p.methods if k in wanted]


def resolve_budget(p: Protocol, args) -> dict:
    """Epochs, warm-up, steps and batch after ``--budget`` and the explicit overrides (which
    win over the budget). At least one KD epoch always stays."""
    f = args.budget
    warmup = args.warmup if args.warmup is not None else scaled(p.warmup, f, minimum=0)
    if args.epochs is not None:
        if args.epochs <= warmup:
            raise SystemExit(f"--epochs {args.epochs} leaves no KD epoch after {warmup} warm-up epoch(s)")
        epochs = args.epochs
    else:
        epochs = max(scaled(p.epochs, f), warmup + 1)
    return {"budget": f, "epochs": epochs, "warmup": warmup, "kd_epochs": epochs - warmup,
            "steps": args.steps, "ref_steps": args.steps or p.steps, "batch": args.batch or p.batch,
            "g_factor": f * args.g_scale}


def kd_schedule(m: Method, steps: Optional[int]) -> Tuple[int, int]:
    """(kd_steps, ep_steps) of a data-free method. ``--steps S`` sets ep_steps = S: pool methods
    keep their synthesis rounds per epoch, generative ones their KD steps per generator step."""
    if steps is None:
        return m.kd_steps, m.ep_steps
    if SYNTHESIZERS[m.engine].uses_pool:
        kd = max(1, steps // max(1, m.ep_steps // m.kd_steps))
    else:
        kd = min(m.kd_steps, steps)
    return kd, max(kd, steps)


RESET_FRACTION = 120 / 200  # the reference resets at warmup + 120 of 200 KD epochs


def reset_flags(m: Method, b: dict, warmup: int) -> List[str]:
    """``--reset_epoch`` for a method that resets its generator's first layer: the reference's
    warmup + 120 of 220 epochs scaled to this run's KD epochs (so a ``--budget 0.05`` run still
    resets, 60% into its KD epochs); nothing for methods that do not reset."""
    flags = dict(zip(m.flags[::2], m.flags[1::2]))
    if flags.get("--reset_l0", "0") == "0" and flags.get("--reset_bn", "0") == "0":
        return []
    return ["--reset_epoch", str(warmup + max(1, round(RESET_FRACTION * b["kd_epochs"])))]


def datafree_argv(p: Protocol, key: str, pair: Pair, b: dict, dataset: str, ckpt: str, seed: int,
                  save_dir: str, args) -> List[str]:
    """The ``kd/faster_data_free_kd.py`` command line of one run."""
    m = p.methods[key]
    kd_steps, ep_steps = kd_schedule(m, b["steps"])
    warmup = b["warmup"] if m.warmup else 0
    pair_flags = [x for k in m.per_pair for x in (f"--{k}", str(getattr(pair, k)))]
    return ["--method", m.engine, "--teacher", pair.teacher, "--student", pair.student, "--dataset", dataset,
            "--data_root", args.data_root, "--teacher_ckpt", ckpt, "--no_progress",
            *([] if args.download else ["--no_download"]),
            "--batch_size", str(b["batch"]), "--lr", str(m.lr),
            *(["--T", str(m.T)] if m.T is not None else []),
            "--epochs", str(b["kd_epochs"] + warmup), "--warmup", str(warmup),
            "--kd_steps", str(kd_steps), "--ep_steps", str(ep_steps),
            "--g_steps", str(scaled(m.g_steps, b["g_factor"])), *p.common, *m.flags, *pair_flags,
            *reset_flags(m, b, warmup),
            "--seed", str(seed), "--device", args.device, "--amp", args.amp, "--save_dir", save_dir]


def method_label(m: Method, b: dict) -> str:
    """The reference label, with the g_steps actually run when the budget changed them."""
    g = scaled(m.g_steps, b["g_factor"])
    return m.label if m.engine in REFERENCES or g == m.g_steps else f"{m.label} [g_steps {g}]"


# ---- teachers -------------------------------------------------------------------------------
def finished(ckpt: str) -> bool:
    """A checkpoint that is not the best.pt of an interrupted training run (whose folder holds a
    last.pt but no metrics.json with status 'finished')."""
    folder = os.path.dirname(ckpt)
    if not os.path.exists(ckpt):
        return False
    if not os.path.exists(os.path.join(folder, "last.pt")):
        return True  # a bare checkpoint put there by hand
    try:
        with open(os.path.join(folder, "metrics.json")) as f:
            return json.load(f).get("status") == "finished"
    except (OSError, ValueError):
        return False


def teacher_candidates(dataset: str, teacher: str, args, out: str) -> List[str]:
    """Where a teacher is looked for, in order (relative paths from the working directory)."""
    tag = f"{dataset}_{teacher}"
    found = []
    if args.teacher_dir:
        found += [os.path.join(args.teacher_dir, f"{tag}.pth"), os.path.join(args.teacher_dir, tag, "best.pt")]
    return found + [os.path.join("run", "teachers", tag, "best.pt"), os.path.join(out, "teachers", tag, "best.pt")]


def teacher_argv(p: Protocol, teacher: str, dataset: str, budget: float, save_dir: str, args) -> List[str]:
    """cifar100.py's command line for a missing teacher, its epochs and milestones x budget."""
    t = p.teacher
    argv = ["--model", teacher, "--dataset", dataset, "--epochs", str(scaled(t["epochs"], budget)),
            "--schedule", str(t["schedule"]), "--data_root", args.data_root, "--save_dir", save_dir,
            "--no_progress", "--seed", str(args.seed), "--device", args.device, "--amp", args.amp]
    if "lr" in t:
        argv += ["--lr", str(t["lr"])]
    if "milestones" in t:
        argv += ["--milestones", *[str(scaled(m, budget)) for m in t["milestones"]]]
    return argv + ([] if args.download else ["--no_download"])


def ensure_teacher(p: Protocol, pair: Pair, dataset: str, args, out: str) -> Tuple[str, str]:
    """(checkpoint, where it came from): an existing one, or one trained now. A full-budget
    teacher of cifar100.py's default recipe goes to run/teachers/ (where the scripts look),
    anything else to <out>/teachers/."""
    if args.teacher_ckpt:
        return args.teacher_ckpt, "--teacher_ckpt"
    for path in teacher_candidates(dataset, pair.teacher, args, out):
        if finished(path):
            return path, "found"
    tag = f"{dataset}_{pair.teacher}"
    full = args.budget == 1.0 and p.teacher_is_default_recipe
    save_dir = os.path.join("run", "teachers", tag) if full else os.path.join(out, "teachers", tag)
    argv = teacher_argv(p, pair.teacher, dataset, args.budget, save_dir, args)
    print(f"[reproduce] no teacher {tag}: training it (python cifar100.py {' '.join(argv)})", flush=True)
    resume = ["--resume"] if os.path.exists(os.path.join(save_dir, "last.pt")) else []  # an interrupted one
    cifar100.train(argv + resume)
    return os.path.join(save_dir, "best.pt"), "trained: cifar100.py " + " ".join(argv)


def teacher_accuracy(pair: Pair, dataset: str, ckpt: str, device, args) -> float:
    spec = dataset_spec(dataset)
    model = load_weights(get_model(pair.teacher, num_classes=spec.num_classes, in_chans=spec.in_chans), ckpt)
    loader = build_loader(dataset, "test", 256, device, args.data_root, download=args.download)
    return evaluate(model.to(device), loader, device)["top1"]


# ---- one run ----------------------------------------------------------------------------------
def run_datafree(argv: List[str]) -> dict:
    m = dfkd.run(argv)
    return {"last_top1": m["last_top1"], "best_top1": m["best_top1"], "time_synthesis": m["time_synthesis"],
            "time_total": m["time_total"]}


def run_real(kind: str, m: Method, pair: Pair, b: dict, dataset: str, ckpt: str, seed: int, save_dir: str,
             device, args) -> dict:
    """KD on real images (gamma 0: labels unused, the data-free runs' loss), or the student on
    real labels, for the same KD budget: kd_epochs x steps steps, cosine from lr to 2e-4."""
    seed_everything(seed)
    spec = dataset_spec(dataset)
    student = get_model(pair.student, num_classes=spec.num_classes, in_chans=spec.in_chans)
    if kind == "kd_real":
        teacher = load_weights(get_model(pair.teacher, num_classes=spec.num_classes, in_chans=spec.in_chans), ckpt)
        objective = KD(student, teacher, T=m.T, weights=Weights(r=0.0, a=1.0))
    else:
        objective = CrossEntropyObjective(student)
    train = build_loader(dataset, "train", b["batch"], device, args.data_root, seed=seed, download=args.download)
    test = build_loader(dataset, "test", 256, device, args.data_root, download=args.download)
    cfg = TrainConfig(epochs=b["kd_epochs"], lr=m.lr, weight_decay=1e-4, schedule="cosine", eta_min=2e-4,
                      amp=args.amp, save_dir=save_dir, progress=False)
    logger = RunLogger(save_dir, name=kind)
    metrics = Trainer(objective, FixedSteps(train, b["ref_steps"]), test, cfg, device, logger).fit()
    logger.close()
    return {"last_top1": metrics["last_top1"], "best_top1": metrics["best_top1"], "time_synthesis": 0.0,
            "time_total": metrics["time_total"]}


def run_dir(out: str, pair: Pair, key: str, seed: int) -> str:
    return os.path.join(out, f"{pair.teacher}-{pair.student}", key, f"seed{seed}")


def run_argv(p: Protocol, key: str, pair: Pair, b: dict, dataset: str, ckpt: str, seed: int, save_dir: str,
             args) -> List[str]:
    """A run's settings as a command line: the data-free script's, or a description of a real-data run."""
    m = p.methods[key]
    if m.engine not in REFERENCES:
        return datafree_argv(p, key, pair, b, dataset, ckpt, seed, save_dir, args)
    return [m.engine, f"epochs={b['kd_epochs']}", f"steps={b['ref_steps']}", f"batch={b['batch']}", f"lr={m.lr}",
            f"T={m.T}", f"seed={seed}", f"teacher_ckpt={ckpt}"]


def run_one(p: Protocol, key: str, pair: Pair, b: dict, dataset: str, ckpt: str, seed: int, out: str,
            device, args) -> dict:
    """One (pair, method, seed) run, with its whole wall time; a diverged run is recorded, not fatal.
    With ``--reuse``, a finished run with the same settings is read back instead, and an
    interrupted data-free run continues from its last.pt (its times then add up both parts)."""
    m = p.methods[key]
    save_dir = run_dir(out, pair, key, seed)
    argv = run_argv(p, key, pair, b, dataset, ckpt, seed, save_dir, args)
    record_path = os.path.join(save_dir, "reproduce_run.json")
    if args.reuse and os.path.exists(record_path):
        with open(record_path) as f:
            old = json.load(f)
        if old.get("argv") == argv and old.get("error") is None:
            return {**old, "reused": True}
    resume = args.reuse and m.engine not in REFERENCES and os.path.exists(os.path.join(save_dir, "last.pt"))
    row = {"pair": pair.name, "method": key, "label": method_label(m, b), "seed": seed, "argv": argv,
           "save_dir": save_dir, "error": None, "resumed": resume}
    synchronize(device)
    t0 = time.perf_counter()
    try:
        if m.engine in REFERENCES:
            row.update(run_real(m.engine, m, pair, b, dataset, ckpt, seed, save_dir, device, args))
        else:
            row.update(run_datafree(argv + (["--resume"] if resume else [])))
    except DivergenceError as e:
        row.update(last_top1=None, best_top1=None, time_synthesis=None, time_total=None, error=str(e))
    synchronize(device)
    row["time_wall"] = time.perf_counter() - t0
    save_json(record_path, row)
    return row


# ---- aggregation ------------------------------------------------------------------------------
STATS = ("last_top1", "best_top1", "time_synthesis", "time_total", "time_wall")


def summarise(runs: List[dict], pairs: Sequence[Pair], keys: Sequence[str]) -> List[dict]:
    """Per (pair, method): medians over the seeds of every statistic, the min-max range of the
    accuracies, and the synthesis speed-up relative to DeepInversion of the same pair."""
    out = []
    for pair in pairs:
        for key in keys:
            mine = [r for r in runs if r["pair"] == pair.name and r["method"] == key]
            ok = [r for r in mine if r["error"] is None]
            s = {"pair": pair.name, "method": key, "label": mine[0]["label"], "seeds": [r["seed"] for r in mine],
                 "n": len(ok), "failed": len(mine) - len(ok)}
            for k in STATS:
                vals = [r[k] for r in ok]
                s[k] = statistics.median(vals) if vals else None
                if k.endswith("top1"):
                    s[k + "_min"], s[k + "_max"] = (min(vals), max(vals)) if vals else (None, None)
            out.append(s)
    for s in out:
        base = next((d for d in out if d["pair"] == s["pair"] and d["method"] == "deepinv"), None)
        syn = s["time_synthesis"]
        s["speedup_vs_deepinv"] = (base["time_synthesis"] / syn if base and base["time_synthesis"] and syn else None)
    return out


def median_speedup(summary: List[dict], key: str) -> Optional[float]:
    vals = [s["speedup_vs_deepinv"] for s in summary if s["method"] == key and s["speedup_vs_deepinv"]]
    return statistics.median(vals) if vals else None


# ---- table and plot ---------------------------------------------------------------------------
def fmt_time(t: Optional[float]) -> str:
    """Seconds as the paper writes them: s below 100 s, then min, then h."""
    if not t:
        return "-"
    if t < 100:
        return f"{t:.2f} s" if t < 10 else f"{t:.1f} s"
    return f"{t / 60:.1f} min" if t < 3600 else f"{t / 3600:.2f} h"


def acc_cell(s: dict, repeats: int) -> str:
    if s["n"] == 0:
        return "diverged"
    cell = f"{s['last_top1']:.2f} ({s['best_top1']:.2f})"
    if repeats > 1:
        cell += f" [{s['best_top1_min']:.2f}-{s['best_top1_max']:.2f}]"
    return cell + (f" ({s['failed']} diverged)" if s["failed"] else "")


def caption(args, dataset: str, p: Protocol, b: dict, seeds: List[int]) -> str:
    steps_text = "each method's own KD steps per epoch" if b["steps"] is None else f"{b['steps']} KD steps per epoch"
    where = f"dataset `{dataset}`" + (f" (instead of the protocol's `{p.dataset}`)" if dataset != p.dataset else "")
    return (f"Protocol `{args.protocol}` on {where}, budget x{b['budget']:g}: {b['kd_epochs']} KD epoch(s) per run "
            f"(after {b['warmup']} synthesis-only warm-up epoch(s) for the methods that have one), "
            f"{steps_text}"
            f" ({b['ref_steps']} for the real-data rows), batch {b['batch']}, seeds {', '.join(map(str, seeds))}, "
            f"device {args.device_name}. Accuracy cells: student top-1 (%) on the real test set, last epoch "
            f"(best epoch)" + (", [min-max of best over the seeds]" if len(seeds) > 1 else "")
            + f", median over {len(seeds)} seed(s); teacher row: teacher top-1. Time cells: synthesis / total. "
            "Speed-up: DeepInversion's synthesis time over the method's, per pair, median over the pairs.")


def render_table(summary: List[dict], pairs: Sequence[Pair], keys: Sequence[str], teacher_top1: Dict[str, float],
                 repeats: int) -> List[str]:
    names = [f"{q.teacher}→{q.student}" for q in pairs]
    head = ["method"] + [c for n in names for c in (f"{n} acc.", f"{n} time")]
    lines = ["| " + " | ".join(head + ["speed-up vs DeepInv"]) + " |", "|" + "---|" * (len(head) + 1)]
    lines.append("| teacher | " + " | ".join(f"{teacher_top1[q.name]:.2f} | -" for q in pairs) + " | - |")
    by = {(s["pair"], s["method"]): s for s in summary}
    for key in keys:
        cells = [by[(pairs[0].name, key)]["label"]]
        for q in pairs:
            s = by[(q.name, key)]
            cells += [acc_cell(s, repeats), f"{fmt_time(s['time_synthesis'])} / {fmt_time(s['time_total'])}"]
        speed = median_speedup(summary, key)
        cells.append(f"{speed:.1f}x" if speed else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_table(path: str, head: str, table: List[str]) -> str:
    text = "\n".join([head, "", *table, "", TIMING_NOTE]) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def write_plot(path: str, summary: List[dict], pairs: Sequence[Pair], keys: Sequence[str],
               teacher_top1: Dict[str, float], title: str) -> None:
    """Best accuracy (median, min-max bars over seeds) against synthesis time, log x; a panel per
    pair, a colour/marker per method; teacher, KD-on-real and student-alone as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    markers = "osD^vP*Xhp<>"
    tab20 = plt.get_cmap("tab20").colors  # strong colours first; no green or gray (the reference lines)
    colors = [tab20[j] for j in (0, 2, 6, 8, 10, 12, 16, 18, 1, 3, 7, 9, 11, 13, 17, 19)]
    by = {(s["pair"], s["method"]): s for s in summary}
    style = {k: i for i, k in enumerate(k for k in keys if k not in REFERENCES)}  # colour/marker per method
    for ax, pair in zip(axes.flat, pairs):
        for key in keys:
            s, i = by[(pair.name, key)], style.get(key, 0)
            if s["best_top1"] is None:
                continue
            if key in REFERENCES:
                ax.axhline(s["best_top1"], ls=":", lw=1.2, color="tab:green" if key == "kd_real" else "tab:gray",
                           label=s["label"])
            elif s["time_synthesis"]:
                err = [[s["best_top1"] - s["best_top1_min"]], [s["best_top1_max"] - s["best_top1"]]]
                ax.errorbar(s["time_synthesis"], s["best_top1"], yerr=err if s["n"] > 1 else None,
                            fmt=markers[i % len(markers)], color=colors[i % len(colors)], ms=7, capsize=3,
                            label=s["label"])
        ax.axhline(teacher_top1[pair.name], color="k", ls="--", lw=1, label="teacher")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{pair.teacher} → {pair.student} (teacher {teacher_top1[pair.name]:.2f})", fontsize=9)
        ax.set_xlabel("synthesis time (s, log scale)")
        ax.set_ylabel("student best test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="mnist", choices=sorted(PROTOCOLS) + ["kd_mnist"],
                    help="kd_mnist: the data-driven KD zoo on MNIST (bench/reproduce_kd.py, its own flags)")
    ap.add_argument("--dataset", default=None, help="run the protocol's pairs and settings on another registered "
                                                    "dataset (e.g. digits, offline)")
    ap.add_argument("--pairs", nargs="+", default=None, help="subset of the protocol's pairs, TEACHER:STUDENT")
    ap.add_argument("--pair", default=None, help="TEACHER:STUDENT replacing the protocol's pairs (any registered "
                                                 "models; adv/oh of a same-teacher pair)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="subset of the protocol's methods (cifar: fast_meta = fast2 fast5 fast10); kd_real and "
                         "student are the real-data rows")
    ap.add_argument("--budget", type=float, default=1.0,
                    help="0 < F <= 1: multiply epochs, warm-up (at least one KD epoch stays), teacher-training "
                         "epochs and every g_steps (at least 1; Fast-2/5/10 all reach 1 below F = 0.1, so "
                         "add --g_scale 1/F to keep the reference g_steps)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="seeds seed..seed+N-1 per method; the table gives medians (default 1, which keeps the "
                         "mnist protocol at about 20 minutes on 2 CPU cores)")
    ap.add_argument("--epochs", type=int, default=None, help="total epochs of a warm-up method (wins over --budget)")
    ap.add_argument("--warmup", type=int, default=None, help="synthesis-only warm-up epochs (wins over --budget)")
    ap.add_argument("--steps", type=int, default=None, help="KD steps per epoch for every method")
    ap.add_argument("--batch", type=int, default=None, help="KD and synthesis batch size")
    ap.add_argument("--g_scale", type=float, default=1.0,
                    help="multiply every method's g_steps (on top of --budget; may exceed 1)")
    ap.add_argument("--data_root", default=None, help="default: ../shared/data for mnist, ./data/torchdata else")
    ap.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    ap.add_argument("--out", default=None, help="default run/reproduce/<protocol>[-<dataset>]")
    ap.add_argument("--teacher_dir", default=None,
                    help="teachers as DIR/<dataset>_<teacher>.pth or DIR/<dataset>_<teacher>/best.pt")
    ap.add_argument("--teacher_ckpt", default=None, help="the teacher of a single-pair run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                    help="precision of the KD steps (auto = bf16 on CUDA, fp32 on CPU; bf16 also on CPU); "
                         "evaluation is always fp32")
    ap.add_argument("--reuse", action="store_true", help="read back finished runs with identical settings and "
                                                         "continue interrupted data-free runs from their last.pt")
    ap.add_argument("--dry_run", action="store_true", help="print the resolved settings and every run's command")
    return ap


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not 0 < args.budget <= 1:
        ap.error(f"--budget must be in (0, 1], got {args.budget}")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.pair and args.pairs:
        ap.error("--pair and --pairs exclude each other")
    if args.pair and ":" not in args.pair:
        ap.error(f"--pair wants TEACHER:STUDENT, got {args.pair!r}")
    if args.dataset is not None and args.dataset not in list_datasets():
        raise SystemExit(f"unknown dataset {args.dataset!r}; valid: {', '.join(list_datasets())}")
    return args


def dry_run(p: Protocol, pairs, keys, b, dataset, seeds, out, args) -> dict:
    """Print every run's settings (data-free runs as their kd/faster_data_free_kd.py command)."""
    for pair in pairs:
        tag = f"{dataset}_{pair.teacher}"
        ckpt = args.teacher_ckpt or next((c for c in teacher_candidates(dataset, pair.teacher, args, out)
                                          if finished(c)), os.path.join(out, "teachers", tag, "best.pt"))
        for key in keys:
            for seed in seeds:
                argv = run_argv(p, key, pair, b, dataset, ckpt, seed, run_dir(out, pair, key, seed), args)
                prefix = "python kd/faster_data_free_kd.py " if key not in REFERENCES else ""
                print(f"{pair.name} {key} seed {seed}: {prefix}{' '.join(argv)}")
    return {"dry_run": True, "budget": b, "pairs": [q.name for q in pairs], "methods": keys}


def main(argv: Optional[list] = None) -> dict:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", default="mnist")
    if pre.parse_known_args(argv_list)[0].protocol == "kd_mnist":  # the data-driven zoo: its own runner
        from bench import reproduce_kd

        return reproduce_kd.main(argv_list)
    args = parse_args(argv)
    p = PROTOCOLS[args.protocol]
    dataset = args.dataset or p.dataset
    pairs = select_pairs(p, args)
    keys = select_methods(p, args.methods, args.protocol)
    if args.teacher_ckpt and len(pairs) > 1:
        raise SystemExit("--teacher_ckpt needs a single pair (--pairs / --pair); use --teacher_dir for several")
    b = resolve_budget(p, args)
    args.data_root = args.data_root or p.data_root
    seeds = [args.seed + i for i in range(args.repeats)]
    out = args.out or os.path.join("run", "reproduce", args.protocol + ("" if dataset == p.dataset else f"-{dataset}"))
    if args.dry_run:
        return dry_run(p, pairs, keys, b, dataset, seeds, out, args)
    device = resolve_device(args.device)
    args.device_name = str(device)
    os.makedirs(out, exist_ok=True)
    runs, teachers = [], {}
    for pair in pairs:
        ckpt, source = ensure_teacher(p, pair, dataset, args, out)
        teachers[pair.name] = {"ckpt": ckpt, "source": source,
                               "top1": teacher_accuracy(pair, dataset, ckpt, device, args)}
        for key in keys:
            for seed in seeds:
                runs.append(run_one(p, key, pair, b, dataset, ckpt, seed, out, device, args))
                print(f"[reproduce] {json.dumps({k: runs[-1].get(k) for k in ('pair', 'label', 'seed', *STATS)})}",
                      flush=True)
    return write_outputs(runs, teachers, p, pairs, keys, b, dataset, seeds, out, args, argv)


def write_outputs(runs, teachers, p, pairs, keys, b, dataset, seeds, out, args, argv) -> dict:
    summary = summarise(runs, pairs, keys)
    top1 = {k: v["top1"] for k, v in teachers.items()}
    head = caption(args, dataset, p, b, seeds)
    text = write_table(os.path.join(out, "table.md"), head,
                       render_table(summary, pairs, keys, top1, len(seeds)))
    write_plot(os.path.join(out, "plot.png"), summary, pairs, keys, top1,
               f"{args.protocol} on {dataset}: student accuracy vs synthesis time (median of {len(seeds)} seed(s))")
    result = {
        "protocol": args.protocol, "dataset": dataset, "pairs": [vars(q) | {"name": q.name} for q in pairs],
        "teachers": teachers, "budget": b, "seeds": seeds,
        "methods": {k: {**vars(p.methods[k]), "label_here": method_label(p.methods[k], b)} for k in keys},
        "common_flags": list(p.common), "runs": runs, "medians": summary,
        "median_speedup_vs_deepinv": {k: median_speedup(summary, k) for k in keys},
        "timing": TIMING_NOTE, "device": args.device_name, "versions": library_versions(),
        "args": vars(args), "argv": list(argv) if argv is not None else sys.argv[1:],
    }
    save_json(os.path.join(out, "results.json"), result)
    print("\n" + text + f"\nwritten: {out}/table.md, {out}/plot.png, {out}/results.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

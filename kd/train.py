"""Data-driven knowledge distillation: train a student from a teacher on real data.

    python kd/train.py --distill crd --teacher resnet32x4 --t_model_path T.pth --student resnet8x4 -a 0 -b 0.8
    python kd/train.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd \\
        --model_s resnet8x4 -a 0 -b 0.8 --trial 1                          # RepDistiller's spelling
    python kd/train.py --teacher resnet20 --student resnet8 --dataset cifar10 \\
        --teacher-checkpoint T.pth --mode nokd kd takd                     # Distiller's: several at once
    python kd/train.py --distill kd --quick                               # offline, about a minute on CPU

Every method is a distiller (``kd/distillers/``, one file each, listed by ``--help`` and in the
error for an unknown name); run-level modes (``takd``, ``allkd``, ``multikd``, ``kdparam``) are
in ``kd/modes/``. Loss: ``r * CE + a * KD(kd_T) + b * method loss``; weights left unset take
the method's reference defaults (RepDistiller's ``scripts/run_cifar_distill.sh``).

Recipes (``--recipe``; picked from the flags' spelling when not given):

* ``crd`` (default; RepDistiller ``train_student.py``): 240 epochs, SGD lr 0.05 (0.01 for
  MobileNetV2/ShuffleNet students), momentum 0.9, weight decay 5e-4, batch 64, lr x0.1 at
  150/180/210, kd_T 4, a 30-epoch init stage for two-stage methods;
* ``distiller`` (karanchahal/distiller ``evaluate_kd.py``, used when its flags are spelled
  ``--teacher-checkpoint``/``--learning-rate``/``--batch-size`` or ``--mode`` lists methods):
  100 epochs, SGD lr 0.1, momentum 0.9 (no Nesterov, as its ``optimizer.py``), weight decay
  5e-4, batch 128, lr x0.1 at int(0.33 E) and int(0.66 E), KD with lambda 0.5 and T 5
  (``-r 0.5 -a 0.5``); a missing teacher checkpoint means the teacher is trained first.

Before anything is written, every name, checkpoint and flag is checked: unknown methods or
models list the valid ones, a teacher checkpoint that does not fit lists the differing keys,
and a flag the chosen method does not read is named in a warning.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch.nn as nn  # noqa: E402

from engine.checkpoint import export_weights, load_weights  # noqa: E402
from engine.data import FixedSteps, build_loader  # noqa: E402
from engine.launch import (Parser, add_common_args, apply_preset, given_flags, load_config, prepare_run,  # noqa: E402
                           resume_after_restart, run_main)
from engine.logger import RunLogger  # noqa: E402
from engine.objective import CrossEntropyObjective  # noqa: E402
from engine.stages import Stage, run_stages  # noqa: E402
from engine.trainer import TrainConfig, Trainer, evaluate  # noqa: E402
from engine.preflight import (UsageError, check_device, check_file, check_output_dir, check_resume,  # noqa: E402
                              require_nonnegative, require_positive)
from engine.utils import seed_everything  # noqa: E402
from kd.distillers import DataInfo, Distiller, Weights, canonical_distiller, get_distiller_class, list_distillers  # noqa: E402
from kd.distillers.registry import _DISTILLERS  # noqa: E402
from kd.modes import canonical_mode, get_mode, list_modes  # noqa: E402
from kd.results import write_results  # noqa: E402
from registry.datasets import dataset_spec, list_datasets  # noqa: E402
from registry.models import canonical_name, get_model, model_normalization  # noqa: E402

SMALL_LR_MODELS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # RepDistiller: lr 0.01 for these students
CRD_MODES = ("exact", "relax")


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule defaults of a seed code base."""

    name: str
    epochs: int
    lr: float
    batch_size: int
    milestones: Optional[Tuple[int, ...]]  # None: fractions of the epochs (Distiller)
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = False
    lr_decay_rate: float = 0.1
    kd_T: float = 4.0
    small_lr: Optional[float] = None

    def milestones_for(self, epochs: int) -> List[int]:
        if self.milestones is not None:
            return list(self.milestones)
        return [int(0.33 * epochs), int(0.66 * epochs)]


RECIPES = {
    "crd": Recipe("crd", epochs=240, lr=0.05, batch_size=64, milestones=(150, 180, 210), weight_decay=5e-4,
                  small_lr=0.01),
    "distiller": Recipe("distiller", epochs=100, lr=0.1, batch_size=128, milestones=None, weight_decay=5e-4,
                        kd_T=5.0),
}
# Distiller (karanchahal) runs every KD term with lambda 0.5 and T 5: (1 - lambda) CE + lambda T^2 KL
DISTILLER_KD_WEIGHTS = Weights(r=0.5, a=0.5)
# flags whose spelling identifies Distiller's evaluate_kd.py command line
DISTILLER_SPELLINGS = ("--teacher-checkpoint", "--learning-rate", "--batch-size", "--weight-decay", "--results-dir")

# --quick: distil the cifar100.py --quick ResNet-8 teacher into LeNet-5-half-BN on the offline digits set
QUICK = dict(teacher="resnet8", student="lenet5_half_bn", dataset="digits", epochs=6, batch_size=64, lr=0.05,
             lr_decay_epochs="4,5")


# --------------------------------------------------------------------------------------- flags
def _option_fields() -> Dict[str, Tuple[dataclasses.Field, List[str]]]:
    """Every method option field (by name) with the methods that read it."""
    fields: Dict[str, Tuple[dataclasses.Field, List[str]]] = {}
    for name, cls in sorted(_DISTILLERS.items()):
        for f in dataclasses.fields(cls.Options):
            if f.name in fields:
                fields[f.name][1].append(name)
            else:
                fields[f.name] = (f, [name])
    return fields


def _field_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str, "bool": bool}.get(
        f.type.replace("Optional[", "").rstrip("]"), str)
    return t


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _parse_taps(items: Optional[Sequence[str]]) -> Optional[Dict[str, str]]:
    if not items:
        return None
    taps = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"tap {item!r}: expected NAME=module.path[:in], e.g. stage4=layer4 or pool=fc:in")
        taps[name] = spec
    return taps


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = ", ".join(list_distillers(True) + list_modes())
    p.add_argument("--distill", nargs="+", default=None, metavar="METHOD", help=f"method(s): {methods}")
    p.add_argument("--mode", nargs="+", default=None,
                   help="Distiller's method list (nokd kd takd ...), or RepDistiller's CRD negatives: exact | relax")
    m = p.add_argument_group("models")
    m.add_argument("--teacher", "--model_t", dest="teacher", default=None,
                   help="teacher architecture (inferred from a RepDistiller save/models/<arch>_vanilla/ path)")
    m.add_argument("--student", "--model_s", "--model", dest="student", default=None)
    m.add_argument("--t_model_path", "--path_t", "--path-t", "--teacher-checkpoint", "--teacher_ckpt",
                   dest="teacher_ckpt", default=None, help="teacher weights (any accepted checkpoint layout)")
    m.add_argument("--s_init", default=None, help="initial student weights (the Zoo's --s_init)")
    m.add_argument("--t_taps", nargs="+", default=None, metavar="NAME=MODULE",
                   help="teacher feature taps for a model without declared ones, e.g. stage4=layer4 pool=fc:in")
    m.add_argument("--s_taps", nargs="+", default=None, metavar="NAME=MODULE", help="student feature taps")
    m.add_argument("--dataset", default="cifar100", help=f"one of: {', '.join(list_datasets())}")
    w = p.add_argument_group("loss weights")
    w.add_argument("-r", "--r", "--gamma", dest="r", type=float, default=None, help="weight of cross-entropy")
    w.add_argument("-a", "--a", "--alpha", dest="a", type=float, default=None, help="weight of Hinton KD")
    w.add_argument("-b", "--b", "--beta", dest="b", type=float, default=None, help="weight of the method's loss")
    w.add_argument("--kd_T", "--T", "--temperature", dest="kd_T", type=float, default=None, help="KD temperature")
    o = p.add_argument_group("optimisation (defaults: the recipe's)")
    o.add_argument("--recipe", choices=sorted(RECIPES), default=None)
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--learning_rate", "--lr", "--learning-rate", dest="lr", type=float, default=None)
    o.add_argument("--lr_decay_epochs", default=None, help="comma-separated epochs, e.g. 150,180,210")
    o.add_argument("--lr_decay_rate", type=float, default=None)
    o.add_argument("--weight_decay", "--weight-decay", dest="weight_decay", type=float, default=None)
    o.add_argument("--momentum", type=float, default=None)
    o.add_argument("--nesterov", action="store_true", default=None)
    o.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=None)
    o.add_argument("--init_epochs", type=int, default=30, help="epochs of a two-stage method's init stage")
    o.add_argument("--steps_per_epoch", type=int, default=None,
                   help="cap each epoch at N steps (the loader continues across epochs); default: whole epochs")
    o.add_argument("--optimizer", default="sgd", help="Distiller's flag; only sgd is implemented")
    o.add_argument("--scheduler", default=None, help="Distiller's flag: multisteplr (default) or steplr")
    o.add_argument("--trial", default="1", help="run tag (RepDistiller)")
    o.add_argument("--results-dir", "--results_dir", dest="results_dir", default=None,
                   help="Distiller's output root (same as --save_dir's parent)")
    o.add_argument("--saliencymix", type=float, default=0.0, metavar="P",
                   help="SaliencyMix probability per batch (0: off; the reference uses 0.5)")
    o.add_argument("--saliencymix_variant", default="batched", choices=["batched", "reference"],
                   help="batched: per-image saliency on the device; reference: one image's box for the batch")
    o.add_argument("--saliencymix_beta", type=float, default=1.0, help="lambda ~ Beta(beta, beta)")
    ignored = p.add_argument_group("accepted for compatibility (no effect)")
    for flag in ("--tb_freq", "--save_freq"):
        ignored.add_argument(flag, type=int, default=None, help="checkpoints are written every epoch")
    ignored.add_argument("--print_freq", type=int, default=None, help="maps to --log_every")
    ignored.add_argument("--num_workers", type=int, default=None, help="maps to --workers")
    g = p.add_argument_group("method options (each read only by the methods listed)")
    for name, (f, users) in _option_fields().items():
        ftype = _field_type(f)
        flags = [f"--{name}"] + [s for s in f.metadata.get("flags", ()) if s != f"--{name}"]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{f.metadata.get('help', '')} [{', '.join(users)}; default {default}]"
        if ftype is bool:
            g.add_argument(*flags, dest=name, type=_str2bool, default=None, metavar="0|1", help=help_)
        elif ftype in (list, tuple) or str(f.type).startswith(("List", "Tuple", "tuple", "list")):
            g.add_argument(*flags, dest=name, nargs="+", default=None, help=help_)
        else:
            g.add_argument(*flags, dest=name, type=ftype if ftype in (int, float) else str, default=None, help=help_)
    r = p.add_argument_group("run-level modes")
    for mode in list_modes():
        get_mode(mode).add_arguments(r)
    p.add_argument("--quick", action="store_true", help="offline digits demo, about a minute on CPU")
    return add_common_args(p)


def _given(argv: Sequence[str]) -> set:
    return {a.split("=")[0] for a in argv if a.startswith("-")}


def infer_teacher_name(path: str, dataset: Optional[str] = None) -> Optional[str]:
    """The teacher architecture from a checkpoint path: RepDistiller's
    ``save/models/<arch>_vanilla/ckpt_epoch_240.pth`` (``get_teacher_name``), or Fast-Datafree's
    ``<dataset>_<arch>.pth``. ``None`` when the path says nothing."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if parent.endswith("_vanilla") or "_vanilla_" in parent:
        arch = parent[:parent.index("_vanilla")]  # e.g. mobile_half, wrn_40_2, resnet32x4
        seg = parent.split("_")
        for name in (arch, "_".join(seg[:3]) if seg[0] == "wrn" else seg[0]):  # then RD's get_teacher_name rule
            try:
                return canonical_name(name)
            except KeyError:
                continue
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    # a registered name itself: chenyaofo's hub names (cifar100_vgg11_bn), also with the -<hash>
    # suffix of its downloads (cifar10_resnet20-4118986f.pt); a bare resnet20-<hash> says nothing
    names = [stem] + ([stem.rsplit("-", 1)[0]] if stem.startswith(tuple(f"{d}_" for d in list_datasets())) else [])
    for name in names:
        try:
            return canonical_name(name)
        except KeyError:
            pass
    for ds in ([dataset] if dataset else []) + list_datasets():
        if stem.startswith(ds + "_"):
            try:
                return canonical_name(stem[len(ds) + 1:])
            except KeyError:
                return None
    return None


def dialect_model(name: str, recipe: str) -> str:
    """The registry name of ``name`` as the recipe's code base means it: under Distiller's recipe
    ``resnet20``, ``resnet18``, ``vgg13``, ... are Distiller's own networks (``kc_resnet20`` ...,
    whose checkpoints have other keys than RepDistiller's nets of the same name)."""
    if recipe == "distiller":
        try:
            return canonical_name(f"kc_{name}")
        except KeyError:
            pass
    return canonical_name(name)


def parse_args(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None,
               recipe: Optional[str] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.job = "kd"
    args.given = _given(argv)
    given = given_flags(parser, argv)
    if args.config:
        config = load_config(args.config, parser)
        apply_preset(args, config, given)
        given |= set(config)
    if args.quick:
        apply_preset(args, QUICK, given)
    # method list: --distill, or Distiller's --mode list (RepDistiller's --mode is CRD's negatives)
    args.crd_mode = args.crd_mode.lower() if getattr(args, "crd_mode", None) else None
    if args.mode is not None:
        if all(m.lower() in CRD_MODES for m in args.mode):
            if len(args.mode) != 1:
                raise ValueError(f"--mode {' '.join(args.mode)}: give one CRD mode, exact or relax")
            args.crd_mode = args.mode[0].lower()
        else:
            if args.distill is not None:
                raise ValueError("give the methods with --distill or with --mode, not both")
            args.distill = args.mode
    methods = [m.lower() for m in (args.distill or ["kd"])]
    args.methods = [canonical_mode(m) if m in list_modes() else canonical_distiller(m) for m in methods]
    # recipe
    if recipe is None and args.recipe is None:
        kc = any(s in args.given for s in DISTILLER_SPELLINGS) or (args.mode is not None and args.crd_mode is None)
        recipe = "distiller" if kc else "crd"
    args.recipe = args.recipe or recipe
    rc = RECIPES[args.recipe]
    if args.optimizer.lower() != "sgd":
        raise ValueError(f"--optimizer {args.optimizer}: only sgd is implemented (the seeds' default)")
    spec = dataset_spec(args.dataset)
    # models
    if args.teacher is None and args.teacher_ckpt:
        args.teacher = infer_teacher_name(args.teacher_ckpt, args.dataset)
    needs_teacher = any(m in list_modes() or get_distiller_class(m).needs_teacher for m in args.methods)
    if args.teacher is None and needs_teacher and not all(m == "allkd" for m in args.methods):
        if args.teacher_ckpt:
            raise ValueError(f"cannot tell the teacher architecture from {args.teacher_ckpt!r}: pass --teacher "
                             "(RepDistiller paths look like save/models/<arch>_vanilla/ckpt_epoch_240.pth)")
        args.teacher = "wrn40_2" if args.recipe == "crd" else "WRN22_4"  # Distiller's evaluate_kd.py default
    if args.teacher is not None:
        args.teacher = dialect_model(args.teacher, args.recipe)
    args.student = dialect_model(args.student or ("wrn16_2" if args.recipe == "crd" else "resnet18"), args.recipe)
    # recipe values
    args.epochs = args.epochs if args.epochs is not None else rc.epochs
    if args.lr is None:
        args.lr = rc.small_lr if rc.small_lr is not None and args.student in SMALL_LR_MODELS else rc.lr
    args.batch_size = args.batch_size if args.batch_size is not None else rc.batch_size
    args.weight_decay = rc.weight_decay if args.weight_decay is None else args.weight_decay
    args.momentum = rc.momentum if args.momentum is None else args.momentum
    args.nesterov = rc.nesterov if args.nesterov is None else args.nesterov
    args.lr_decay_rate = rc.lr_decay_rate if args.lr_decay_rate is None else args.lr_decay_rate
    if args.lr_decay_epochs is not None:
        try:
            args.milestones = [int(e) for e in str(args.lr_decay_epochs).split(",") if e.strip()]
        except ValueError:
            raise ValueError(f"--lr_decay_epochs {args.lr_decay_epochs!r}: expected comma-separated integers") from None
    elif (args.scheduler or "").lower() == "steplr":
        args.milestones = list(range(50, args.epochs, 50))  # Distiller's StepLR(step_size=50, gamma=0.1)
    else:
        if args.scheduler and args.scheduler.lower() != "multisteplr":
            raise ValueError(f"--scheduler {args.scheduler}: use multisteplr or steplr")
        args.milestones = rc.milestones_for(args.epochs)
    args.kd_T_given = args.kd_T is not None
    args.kd_T = args.kd_T if args.kd_T is not None else rc.kd_T
    if args.print_freq is not None:
        args.log_every = args.print_freq
    if args.num_workers is not None:
        args.workers = args.num_workers
    for flag in ("tb_freq", "save_freq"):
        if getattr(args, flag) is not None:
            warnings.warn(f"--{flag} has no effect here: last.pt and best.pt are written every epoch", stacklevel=2)
    if not 0.0 <= args.saliencymix <= 1.0:
        raise ValueError(f"--saliencymix {args.saliencymix}: a probability in [0, 1]")
    args.t_taps_map, args.s_taps_map = _parse_taps(args.t_taps), _parse_taps(args.s_taps)
    if args.save_dir is None:
        root = args.results_dir or os.path.join("run", "kd")
        tag = "+".join(args.methods)
        args.save_dir = os.path.join(root, f"{args.dataset}-S_{args.student}-T_{args.teacher or 'none'}-{tag}"
                                     f"-trial{args.trial}")
    args.spec = spec
    return args


# ------------------------------------------------------------------------------- building blocks
def method_options(args: argparse.Namespace, cls) -> Any:
    """The method's Options from the command line (unset flags keep the method's defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls.Options)
              if getattr(args, f.name, None) is not None}
    return cls.Options(**values)


def method_weights(args: argparse.Namespace, cls) -> Weights:
    given = Weights(args.r, args.a, args.b)
    if args.recipe == "distiller":
        kc = getattr(cls, "weights_distiller", None) or (DISTILLER_KD_WEIGHTS if cls.name == "kd" else None)
        if kc is not None:
            return given.merged(kc).merged(cls.weights)
    return given.merged(cls.weights)


def warn_unused(args: argparse.Namespace, method: str) -> List[str]:
    """Warn about every given flag that ``method`` does not read; returns the flags named."""
    cls = get_distiller_class(method) if method not in list_modes() else None
    unused = []
    if cls is not None:
        own = {f.name for f in dataclasses.fields(cls.Options)}
        for name, (f, users) in _option_fields().items():
            if name not in own and getattr(args, name, None) is not None:
                flag = "--mode" if name == "crd_mode" and "--crd_mode" not in args.given else f"--{name}"
                unused.append(f"{flag} (read by {', '.join(users)})")
        if args.a is not None and args.a != 0 and not cls.needs_teacher:
            unused.append("-a (no teacher)")
        if args.b is not None and args.b != 0 and not cls.has_method_loss():
            unused.append(f"-b ({method} has no loss of its own)")
        if args.kd_T_given and not cls.uses_temperature(method_weights(args, cls)):
            unused.append("--kd_T (no KD term at -a 0)")
    else:
        unused += get_mode(method).unused_flags(args)
    for mode in list_modes():
        if mode != method and mode not in args.methods:
            unused += [f"--{d} (read by {mode})" for d in get_mode(mode).flags if getattr(args, d, None) is not None]
    for u in unused:
        warnings.warn(f"{method}: flag {u} is not used by this method", stacklevel=2)
    return unused


def data_info(spec, loader) -> DataInfo:
    return DataInfo(num_classes=spec.num_classes, in_chans=spec.in_chans, image_size=spec.image_size,
                    mean=tuple(spec.mean), std=tuple(spec.std), num_samples=loader.num_samples,
                    labels=loader.labels_cpu)


def train_config(args: argparse.Namespace, save_dir: str, epochs: Optional[int] = None, lr: Optional[float] = None,
                 schedule: str = "multistep") -> TrainConfig:
    return TrainConfig(epochs=args.epochs if epochs is None else epochs, lr=args.lr if lr is None else lr,
                       momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov,
                       schedule=schedule, milestones=args.milestones, gamma=args.lr_decay_rate, amp=args.amp,
                       opt_impl=args.opt_impl, compile=args.compile, log_every=args.log_every, save_dir=save_dir,
                       progress=not args.no_progress)


class RunContext:
    """Everything one invocation shares between its runs: device, data, teacher, logger."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.spec = args.spec
        self.device = check_device(args.device)
        self._loaders: Dict[Tuple[bool, Optional[bool]], Any] = {}
        # the statistics the teacher's (else the student's) published checkpoints were trained with,
        # when they are not the dataset's own (akamaster's, chenyaofo's CIFAR-100 models)
        self.normalization = model_normalization(args.teacher or args.student, self.spec.name)
        self.test_loader = build_loader(args.dataset, "test", 256, self.device, args.data_root, pipeline=args.pipeline,
                                        workers=args.workers, download=not args.no_download,
                                        normalization=self.normalization)
        self.logger: Optional[RunLogger] = None

    def train_loader(self, with_index: bool = False, flip: Optional[bool] = None):
        key = (with_index, flip)
        if key not in self._loaders:
            a = self.args
            loader = build_loader(a.dataset, "train", a.batch_size, self.device, a.data_root, pipeline=a.pipeline,
                                  workers=a.workers, seed=a.seed, download=not a.no_download, with_index=with_index,
                                  flip=flip, normalization=self.normalization)
            self._loaders[key] = loader
        return self._loaders[key]

    def source(self, loader):
        """The batch source the trainer reads: the loader, through SaliencyMix when asked, capped
        at ``--steps_per_epoch`` steps when given."""
        if self.args.saliencymix > 0:
            from engine.saliency import SaliencyMix

            loader = SaliencyMix(loader, p=self.args.saliencymix, variant=self.args.saliencymix_variant,
                                 num_classes=self.spec.num_classes, beta=self.args.saliencymix_beta,
                                 mean=(self.normalization or (self.spec.mean, self.spec.std))[0],
                                 std=(self.normalization or (self.spec.mean, self.spec.std))[1])
        if self.args.steps_per_epoch:
            loader = FixedSteps(loader, self.args.steps_per_epoch)
        return loader

    def fresh_stage(self) -> None:
        """Reseed the global RNGs and every loader's shuffle order: each stage then sees the same
        data order whether or not the stages before it ran in this process (resume)."""
        seed_everything(self.args.seed)
        for loader in self._loaders.values():
            loader.generator.manual_seed(self.args.seed)

    def model(self, name: str) -> nn.Module:
        return get_model(name, num_classes=self.spec.num_classes, in_chans=self.spec.in_chans)

    def load_teacher(self, name: str, ckpt: Optional[str]) -> Tuple[nn.Module, Optional[str]]:
        """The teacher with its weights (checked to fit); ``None`` path: none found."""
        teacher = self.model(name)
        path = ckpt or os.path.join("run", "teachers", f"{self.args.dataset}_{name}", "best.pt")
        if not os.path.isfile(path):
            if ckpt:
                raise FileNotFoundError(f"no teacher checkpoint at {ckpt!r}")
            return teacher, None
        load_weights(teacher, path)
        return teacher.to(self.device), path

    def teacher_accuracy(self, teacher: nn.Module) -> float:
        return evaluate(teacher.to(self.device), self.test_loader, self.device)["top1"]

    def info(self, msg: str) -> None:
        (self.logger.info if self.logger else print)(msg)


def teacher_stage(ctx: RunContext, name: str, save_dir: str, model: nn.Module) -> Stage:
    """Train a teacher from scratch with the run's recipe (Distiller trains its teacher when no
    checkpoint is given; allkd trains each of its teachers)."""
    a = ctx.args

    def build():
        ctx.fresh_stage()
        cfg = train_config(a, save_dir)
        logger = RunLogger(save_dir, name=f"teacher-{name}", wandb_project=a.wandb, config=_plain(a))
        return Trainer(CrossEntropyObjective(model), ctx.source(ctx.train_loader()), ctx.test_loader, cfg,
                       ctx.device, logger, {**_plain(a), "stage": "teacher", "model": name})

    return Stage(f"teacher {name}", build)


def _plain(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}


def build_distiller(ctx: RunContext, method: str, student: nn.Module, teacher: Optional[nn.Module],
                    weights: Optional[Weights] = None, T: Optional[float] = None) -> Distiller:
    cls = get_distiller_class(method)
    a = ctx.args
    loader = ctx.train_loader(cls.needs_index, cls.flip)
    return cls(student, teacher if cls.needs_teacher else None, data_info(ctx.spec, loader),
               T=a.kd_T if T is None else T, weights=weights or method_weights(a, cls),
               options=method_options(a, cls), t_taps=a.t_taps_map, s_taps=a.s_taps_map)


def distill_stages(ctx: RunContext, method: str, student: nn.Module, teacher: Optional[nn.Module], save_dir: str,
                   label: str = "", weights: Optional[Weights] = None, T: Optional[float] = None) -> List[Stage]:
    """The stages of one distillation run: the method's init stage (if it has one and
    ``--init_epochs`` > 0; in ``save_dir/init``), then the main stage (in ``save_dir``)."""
    a = ctx.args
    d = build_distiller(ctx, method, student, teacher, weights, T)
    ctx.info(f"{label + ': ' if label else ''}{d.describe()}")
    loader = ctx.train_loader(d.needs_index, d.flip)
    stages: List[Stage] = []
    init = d.init_stage(a.init_epochs) if a.init_epochs > 0 else None
    if init is not None:
        def build_init():
            ctx.fresh_stage()
            folder = os.path.join(save_dir, "init")
            cfg = train_config(a, folder, epochs=init.epochs, lr=init.lr, schedule="constant")
            return Trainer(init.objective, ctx.source(loader), None, cfg, ctx.device,
                           RunLogger(folder, name=f"{method}-init", wandb_project=a.wandb, config=_plain(a)), {**_plain(a), "stage": init.name})
        stages.append(Stage(f"{label or method} {init.name}", build_init))

    def build_main():
        ctx.fresh_stage()
        return Trainer(d, ctx.source(loader), ctx.test_loader, train_config(a, save_dir), ctx.device,
                       RunLogger(save_dir, name=method, wandb_project=a.wandb, config=_plain(a)),
                       {**_plain(a), "method": method, "stage": "main", "weights": dataclasses.asdict(d.w),
                        "T_used": d.T})
    stages.append(Stage(label or method, build_main, after=lambda _metrics: d.remove_taps()))
    return stages


def run_method(ctx: RunContext, method: str, save_dir: str) -> dict:
    """One method end to end; returns its results row."""
    a = ctx.args
    if method in list_modes():
        return get_mode(method).run(ctx, save_dir)
    cls = get_distiller_class(method)
    teacher, t_acc = ctx.teacher, ctx.teacher_top1
    student = ctx.model(a.student)
    if a.s_init:
        load_weights(student, a.s_init)
    seed_everything(a.seed)
    stages = distill_stages(ctx, method, student, teacher if cls.needs_teacher else None, save_dir)
    metrics = run_stages(stages, resume=bool(a.resume), log=ctx.info)[-1]
    if a.export and len(a.methods) == 1:
        ctx.info(f"student weights: {export_weights(student, a.export)}")
    row = result_row(method, a.student, a.teacher if cls.needs_teacher else None, t_acc if cls.needs_teacher else None,
                     metrics, save_dir)
    extra = {k: v for k, v in (metrics.get("history") or [{}])[-1].items() if k.startswith("top1_")}
    row.update(extra)
    return row


def result_row(method: str, student: str, teacher: Optional[str], teacher_top1: Optional[float], metrics: dict,
               save_dir: str) -> dict:
    return {"method": method, "student": student, "teacher": teacher, "teacher_top1": teacher_top1,
            "last_top1": metrics.get("last_top1"), "best_top1": metrics.get("best_top1"),
            "epochs": metrics.get("epochs"), "time_total": metrics.get("time_total"), "save_dir": save_dir}


def prepare_teacher(ctx: RunContext) -> List[Stage]:
    """Load the teacher, or plan its training (Distiller's habit) when no checkpoint exists."""
    a = ctx.args
    ctx.teacher = ctx.teacher_path = ctx.teacher_top1 = None
    if a.teacher is None:
        return []
    teacher, path = ctx.load_teacher(a.teacher, a.teacher_ckpt)
    ctx.teacher = teacher
    if path is not None:
        ctx.teacher_path = path
        return []
    if a.recipe != "distiller":
        default = os.path.join("run", "teachers", f"{a.dataset}_{a.teacher}", "best.pt")
        raise FileNotFoundError(
            f"no teacher checkpoint: pass --t_model_path (or --path_t), or train one first with "
            f"'python cifar100.py --model {a.teacher} --dataset {a.dataset}' (it writes {default})")
    folder = os.path.join(a.save_dir, "teacher")
    ctx.teacher_path = os.path.join(folder, "best.pt")
    return [teacher_stage(ctx, a.teacher, folder, teacher)]


def run(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None, recipe: Optional[str] = None) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        args = parse_args(argv, prog, recipe)
        for method in args.methods:
            warn_unused(args, method)
    resume_after_restart(args)
    check_args(args)
    ctx = RunContext(args)  # loads the test split: fails before anything is written
    for method in args.methods:
        if method in list_modes():
            get_mode(method).validate(ctx)
    if args.quick and args.teacher_ckpt is None:  # every check that needs no teacher weights has passed
        import cifar100

        args.teacher_ckpt = cifar100.ensure_quick_teacher(["--device", args.device]
                                                          + (["--no_progress"] if args.no_progress else []))
    teacher_stages = prepare_teacher(ctx)
    for method in args.methods:  # build once to validate taps/shapes/options before writing anything
        if method not in list_modes():
            build_distiller(ctx, method, ctx.model(args.student), ctx.teacher).remove_taps()
    if args.resume not in (None, "auto", "last"):
        raise ValueError("kd/train.py resumes every stage from its own folder under --save_dir: pass --resume "
                         f"without a path (and --save_dir <the run's folder>), not {args.resume!r}")
    wants_resume = bool(args.resume)
    check_output_dir(args.save_dir, wants_resume, args.overwrite)
    if wants_resume:
        resume_checks(args)
    if args.dry_run:
        print(f"dry run: {' '.join(args.methods)} {args.teacher} -> {args.student} on {args.dataset}, "
              f"{args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, device {ctx.device}, output {args.save_dir}; "
              "all checks passed, nothing written")
        return {"dry_run": True}
    args.resume = None  # each stage finds its own last.pt (run_stages)
    device, logger, _ = prepare_run(args, "kd")
    ctx.logger = logger
    args.resume = wants_resume
    with logger:
        return _run_stages(args, ctx, logger, teacher_stages, wants_resume)


def check_args(args: argparse.Namespace) -> None:
    """The numbers and files of a KD command line, before anything is built."""
    require_positive(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, kd_T=args.kd_T,
                     init_epochs=args.init_epochs, steps_per_epoch=args.steps_per_epoch, log_every=args.log_every)
    require_nonnegative(momentum=args.momentum, weight_decay=args.weight_decay, lr_decay_rate=args.lr_decay_rate,
                        r=args.r, a=args.a, b=args.b, workers=args.workers)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: continue the run in --save_dir, or replace it, not both")
    if args.export and args.methods[0] in list_modes():
        raise UsageError(f"--export {args.export}: the {args.methods[0]} mode trains several models; each run's "
                         "folder holds its best.pt and last.pt")
    if args.export and len(args.methods) != 1:
        raise UsageError(f"--export {args.export}: give one method (this run trains {len(args.methods)}: "
                         f"{' '.join(args.methods)}); each run's folder holds its best.pt and last.pt")
    check_file("teacher_ckpt", args.teacher_ckpt, "checkpoint")
    check_file("s_init", args.s_init, "checkpoint")


def resume_checks(args: argparse.Namespace) -> None:
    """Every stage checkpoint under --save_dir must be of this job, its methods, models and
    dataset, and the flags the saved state fixes must not change (a longer --epochs is applied:
    each stage's schedule is re-planned)."""
    expected = {k: getattr(args, k) for k in ("methods", "student", "teacher", "dataset")}
    fixed = ["lr", "batch_size", "momentum", "weight_decay", "nesterov", "kd_T", "r", "a", "b", "seed", "recipe"]
    for root, _, files in sorted(os.walk(args.save_dir)):
        if "last.pt" in files:
            current = {k: v for k, v in vars(args).items() if k != "epochs"}  # stages have their own lengths
            check_resume(os.path.join(root, "last.pt"), "kd", expected, current, fixed)


def _run_stages(args, ctx, logger, teacher_stages, wants_resume) -> dict:
    if wants_resume and not any(f == "last.pt" for _, _, files in os.walk(args.save_dir) for f in files):
        logger.info(f"--resume: no checkpoint under {args.save_dir} yet; starting from the beginning")
    resume = wants_resume
    if teacher_stages:
        logger.info(f"no checkpoint for teacher {args.teacher}: training it first ({args.recipe} recipe)")
        run_stages(teacher_stages, resume=bool(resume), log=logger.info)
        load_weights(ctx.teacher, ctx.teacher_path)
    if ctx.teacher is not None and any(m in list_modes() or get_distiller_class(m).needs_teacher
                                       for m in args.methods):
        ctx.teacher_top1 = ctx.teacher_accuracy(ctx.teacher)
        logger.info(f"teacher {args.teacher} ({ctx.teacher_path}): test top1 {ctx.teacher_top1:.2f}")
    rows = []
    for method in args.methods:
        folder = args.save_dir if len(args.methods) == 1 else os.path.join(args.save_dir, method)
        row = run_method(ctx, method, folder)
        rows.extend(row if isinstance(row, list) else [row])
    return write_results(args.save_dir, rows, vars_for_json(args), logger=logger)


def vars_for_json(args: argparse.Namespace) -> dict:
    out = _plain(args)
    out.pop("given", None)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

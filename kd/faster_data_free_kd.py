"""Data-free knowledge distillation: train a student from a teacher checkpoint alone.

    python kd/faster_data_free_kd.py --method fast_meta --teacher wrn40_2 --student wrn16_2 \\
        --dataset cifar100 --teacher_ckpt PATH --g_steps 10 --lr_g 2e-3 --lr_z 0.01 --adv 1.1 \\
        --oh 0.4 --bn 10 --bn_mmt 0.9 --T 20 --lr 0.2 --epochs 220 --warmup 20 --reset_l0 1
    python kd/faster_data_free_kd.py --method fast_meta --quick     # offline, a few minutes on CPU

Flags are those of Fast-Datafree's ``datafree_kd.py``, and its published command lines
(``scripts/*.sh``, with ``--gpu``, ``--wd``, ``-j``, ``-p``, ``--fp16`` and the distributed flags)
run unchanged. Defaults: a flag not given takes the value of ``--config FILE`` if given, else of
the method's published CIFAR recipe (``recipes/<method>_cifar.yaml``; fast_meta: Fast-5), else
the ``SynthesisConfig`` default. Two differences from the reference: ``--save_dir`` holds all of
a run's outputs (the reference writes its images there and its logs to
``checkpoints/datafree-<method>/``), and the teacher is read from ``--teacher_ckpt``, else
``run/teachers/<dataset>_<teacher>/best.pt``, else the reference's
``checkpoints/pretrained/<dataset>_<teacher>.pth``.

Everything is checked before anything is written: names, numbers, files, the device, the data,
the output folder (a folder holding another run needs ``--resume`` or ``--overwrite``) and a
resume checkpoint. ``--dry_run`` stops after the checks and prints the plan.

The real test set is used only to report accuracy each epoch. Deviation: the student's cosine
schedule spans ``epochs - warmup`` epochs (the reference hard-codes 200, which equals that only
for its 220/20 setting).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402
from dataclasses import fields  # noqa: E402

from datafree import SYNTHESIZERS, SynthesisConfig  # noqa: E402
from datafree.api import build_trainer, student_loss  # noqa: E402
from datafree.pool import export_image_set, iter_image_set  # noqa: E402
from engine.checkpoint import export_weights, load_weights  # noqa: E402
from engine.data import build_loader  # noqa: E402
from engine.launch import (Parser, add_common_args, apply_preset, given_flags, load_config, prepare_run,  # noqa: E402
                           run_main)
from engine.preflight import (UsageError, check_device, check_file, check_output_dir, check_resume,  # noqa: E402
                              probe_models, require_nonnegative, require_positive)
from engine.recipes import method_recipe  # noqa: E402
from engine.trainer import TrainConfig, evaluate  # noqa: E402
from registry.datasets import canonical_dataset, dataset_spec  # noqa: E402
from registry.models import canonical_name, get_model, model_normalization  # noqa: E402

_SYN = {f.name: f.default for f in fields(SynthesisConfig)}  # the one source of synthesis defaults

# --quick: distil the cifar100.py --quick ResNet-8 teacher (78k parameters) into LeNet-5-BN (62k)
# on the offline digits set, about 90 s on 2 CPU cores. The generator is half the published width
# (ngf 32) to fit that budget; everything else follows the Fast-5 recipe, scaled down.
QUICK = dict(teacher="resnet8", student="lenet5_bn", dataset="digits", epochs=12, warmup=1,
             batch_size=128, synthesis_batch_size=128, kd_steps=20, ep_steps=40, g_steps=5, lr=0.1,
             lr_g=3e-3, lr_z=0.01, adv=1.0, bn=10.0, oh=0.5, bn_mmt=0.9, T=20.0, reset_l0=0, ngf=32)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="fast_meta", help=f"one of: {', '.join(sorted(SYNTHESIZERS))}")
    p.add_argument("--teacher", default="wrn40_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--teacher_ckpt", default=None, help="teacher weights (default run/teachers/<dataset>_<teacher>/best.pt)")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--batch_size", type=int, default=128, help="KD batch size")
    p.add_argument("--synthesis_batch_size", type=int, default=None, help="default: --batch_size")
    p.add_argument("--lr", type=float, default=0.1, help="student SGD learning rate")
    p.add_argument("--weight_decay", "--wd", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--eta_min", type=float, default=2e-4,
                   help="floor of the student's cosine schedule (the CIFAR reference's 2e-4; its ImageNet runs use 0)")
    p.add_argument("--T", type=float, default=None,
                   help="KD temperature (default: the method's published runs: 20 for the pool methods, "
                        "1 for dafl/zskt/dfq)")
    p.add_argument("--kd_loss", default=None, choices=["kl", "l1"],
                   help="student loss on teacher logits (default: the published runs': l1 for dfad, else kl)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=0, help="epochs of synthesis only, before KD starts")
    p.add_argument("--kd_steps", type=int, default=400, help="student steps after each synthesis round")
    p.add_argument("--ep_steps", type=int, default=400, help="student steps per epoch")
    g = p.add_argument_group(SYNTHESIS_GROUP)
    g.add_argument("--g_steps", type=int, default=_SYN["g_steps"], help="generator steps per round")
    g.add_argument("--nz", type=int, default=None, help="latent size (default 512 for dafl, else 256)")
    g.add_argument("--ngf", type=int, default=_SYN["ngf"], help="generator width (the reference's 64)")
    g.add_argument("--lr_g", type=float, default=_SYN["lr_g"])
    g.add_argument("--lr_z", type=float, default=_SYN["lr_z"])
    g.add_argument("--adv", type=float, default=_SYN["adv"], help="weight of the adversarial term")
    g.add_argument("--bn", type=float, default=_SYN["bn"], help="weight of the BN-statistics term")
    g.add_argument("--oh", type=float, default=_SYN["oh"], help="weight of the one-hot (CE) term")
    g.add_argument("--act", type=float, default=_SYN["act"], help="weight of DAFL's activation term")
    g.add_argument("--balance", type=float, default=_SYN["balance"], help="weight of the class-balance term")
    g.add_argument("--bn_mmt", type=float, default=_SYN["bn_mmt"], help="momentum of the BN-statistics EMA")
    g.add_argument("--is_maml", type=int, default=_SYN["is_maml"], help="1 FOMAML (trajectory sum), 0 Reptile, 2 second-order")
    g.add_argument("--maml_truncate", type=int, default=None,
                   help="--is_maml 2: back-propagate through the last K inner steps only (bounds memory; 0 = FOMAML)")
    g.add_argument("--reset_l0", type=int, default=0, help="re-initialise the generator's first layer at --reset_epoch")
    g.add_argument("--reset_bn", type=int, default=0, help="reset the generator's BN layers at --reset_epoch")
    g.add_argument("--reset_epoch", type=int, default=None,
                   help="epoch (1-based, as the log counts) of --reset_l0/--reset_bn; default warmup + 120 "
                        "(the reference's round 120 + warmup at one round per epoch)")
    g.add_argument("--balanced_targets", action="store_true", help="equal share of each class per batch")
    g.add_argument("--cr", type=float, default=_SYN["cr"], help="CMI: weight of the contrastive term")
    g.add_argument("--cr_T", type=float, default=_SYN["cr_T"], help="CMI: contrastive temperature")
    g.add_argument("--cmi_layers", nargs="+", default=None,
                   help="CMI: feature taps ('module' or 'module:in'); default the inputs of every teacher BN. "
                        "The reference uses the inputs of layer1..layer4 for ResNet-34: layer1:in layer2:in ...")
    g.add_argument("--cmi_init", default=None, help="folder or .pt of pre-synthesised images to start the pool")
    g.add_argument("--generator", default="auto", choices=["auto", "dcgan", "deep"],
                   help="dcgan (z vector) or deep (spatial z, ImageNet size); auto: deep from 128 px")
    g.add_argument("--keep", default="best", choices=["best", "last"], help="which inner-step batch is pooled")
    g.add_argument("--meta_z", action="store_true", help="fast_meta: persistent, meta-learned latents")
    g.add_argument("--lr_g_meta", type=float, default=None, help="fast_meta meta lr of G (default lr_g * g_steps)")
    g.add_argument("--lr_z_meta", type=float, default=_SYN["lr_z_meta"], help="fast_meta meta lr of the latents (--meta_z)")
    g.add_argument("--z_reinit", type=float, default=_SYN["z_reinit"],
                   help="with --meta_z: re-sample latents every N epochs, counted in rounds (default 5: the "
                        "logged ImageNet runs' every 50 rounds at 10 rounds per epoch)")
    g.add_argument("--reptile_scale", type=float, default=_SYN["reptile_scale"], help="Reptile gradient factor (--is_maml 0)")
    g.add_argument("--syn_amp", default="off", choices=["off", "bf16"],
                   help="bf16 autocast of the synthesis forwards (the reference runs them in fp32)")
    g.add_argument("--pool_storage", default="uint8", choices=["uint8", "fp16"])
    g.add_argument("--pool_capacity", type=int, default=None,
                   help="cap on synthesized pooled images (oldest dropped; --cmi_init images always stay)")
    g.add_argument("--pool_device_gb", type=float, default=None,
                   help="keep at most this much of the pool on the device (default: all of it)")
    g.add_argument("--pool_host_gb", type=float, default=None,
                   help="then at most this much in (pinned) host memory; the rest goes to --pool_spill_dir")
    g.add_argument("--pool_spill_dir", default=None, help="folder of the pool's memory-mapped file (default <save_dir>/pool_spill)")
    d = p.add_argument_group("a dataset outside the registry (or other statistics for a registered one)")
    d.add_argument("--num_classes", type=int, default=None, help="classes of the teacher's head")
    d.add_argument("--img_size", type=int, default=None, help="side of the (square) images the teacher takes")
    d.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean the teacher was trained with")
    d.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std (as many values as --mean)")
    d.add_argument("--no_eval", action="store_true",
                   help="no test set: train without evaluating (last.pt, --export and the grids are the outputs)")
    p.add_argument("--export_images", default=None, metavar="DIR|FILE.pt",
                   help="after training, write the synthetic image pool as a folder of PNGs or one uint8 .pt "
                        "tensor (both readable by --cmi_init here and by the reference's --cmi_init folder reader)")
    p.add_argument("--log_tag", default="", help="suffix of the default --save_dir")
    p.add_argument("--evaluate_only", action="store_true", help="evaluate the teacher (and --resume student) and exit")
    p.add_argument("--quick", action="store_true", help="offline digits demo, a few minutes on CPU")
    add_common_args(p)
    c = p.add_argument_group(COMPAT_GROUP, "Fast-Datafree's datafree_kd.py flags: honoured where they mean something "
                                           "here, otherwise named in a warning")
    c.add_argument("--gpu", type=int, default=None, help="GPU id: --device cuda:N (no CUDA: a warning, then the CPU)")
    c.add_argument("--fp16", action="store_true", help="--amp fp16 on CUDA (on the CPU: a warning, then fp32)")
    c.add_argument("-p", "--print_freq", type=int, default=None, help="--log_every")
    c.add_argument("--multiprocessing_distributed", "--multiprocessing-distributed", action="store_true",
                   help="not used: one process per run here (a warning)")
    c.add_argument("--world_size", "--world-size", type=int, default=None, help="not used (a warning)")
    c.add_argument("--rank", type=int, default=None, help="not used (a warning)")
    c.add_argument("--dist_url", "--dist-url", default=None, help="not used (a warning)")
    c.add_argument("--dist_backend", "--dist-backend", default=None, help="not used (a warning)")
    c.add_argument("--start_epoch", type=int, default=None, help="not used: --resume restores the epoch (a warning)")
    c.add_argument("--pretrained", action="store_true", help="not used: the teacher is always loaded (a warning)")
    return p


SYNTHESIS_GROUP = "synthesis"
COMPAT_GROUP = "accepted from Fast-Datafree"
# the reference's teacher location (datafree_kd.py), tried after run/teachers/
REFERENCE_TEACHER = os.path.join("checkpoints", "pretrained", "{dataset}_{teacher}.pth")
LOSS_WEIGHTS = ("adv", "bn", "oh", "act", "balance", "cr")


def synthesis_flags(parser: argparse.ArgumentParser) -> set:
    """The ``dest`` names of the method-dependent flags: the synthesis group, and --kd_loss."""
    group = next(g for g in parser._action_groups if g.title == SYNTHESIS_GROUP)
    return {a.dest for a in group._group_actions} | {"kd_loss"}


def warn_unused(args: argparse.Namespace, syn: SynthesisConfig, argv: Optional[list] = None) -> list:
    """One warning line per given flag that ``args.method`` does not use; returns the flags."""
    parser = build_parser()
    given = set(args.given) if hasattr(args, "given") else given_flags(parser, argv)
    given |= set(getattr(args, "config_flags", ()))  # a --config file's keys count as given
    cls = SYNTHESIZERS[args.method]
    unused = [f"--{f}" for f in cls.unused_flags(given & synthesis_flags(parser), syn)]
    if "T" in given and student_loss(args.method, args.kd_loss, args.T).loss == "l1":
        unused.append("--T (the L1 student loss has no temperature; --kd_loss kl uses it)")
    for flag in unused:
        print(f"warning: {args.method} does not use {flag}", file=sys.stderr)
    return unused


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Parse, then fill every flag not given from --config, --quick and the method's recipe (in
    that order), and map the reference's flags. Names and numbers are checked by ``check_args``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.job = "datafree"
    given = given_flags(parser, argv)
    args.given = sorted(given)
    if args.method not in SYNTHESIZERS:
        raise UsageError(f"unknown data-free method {args.method!r}. Valid methods: {', '.join(sorted(SYNTHESIZERS))}")
    config = load_config(args.config, parser) if args.config else {}
    if config.get("method", args.method) != args.method and "method" not in given:
        args.method = config["method"]
    recipe = method_recipe(args.method)
    layers = [config] + ([QUICK] if args.quick else []) + [load_config(recipe, parser) if recipe else {}]
    done = set(given)
    for layer in layers:
        apply_preset(args, {k: v for k, v in layer.items() if k not in done}, given)
        done |= set(layer)
    args.config_flags = sorted(config)
    args.recipe = recipe
    _map_reference_flags(args, given)
    custom = (args.num_classes, args.img_size, args.mean, args.std)
    if all(v is not None for v in custom):  # a dataset outside the registry: its name is only a label
        try:
            args.dataset = canonical_dataset(args.dataset)
        except KeyError:
            pass
    else:
        try:
            args.dataset = canonical_dataset(args.dataset)
        except KeyError as e:
            missing = [f for f, v in zip(("--num_classes", "--img_size", "--mean", "--std"), custom) if v is None]
            raise UsageError(f"{e.args[0]}; a dataset outside the registry also needs {' '.join(missing)}") from None
    if args.nz is None:
        args.nz = SYNTHESIZERS[args.method].default_nz
    if args.synthesis_batch_size is None:
        args.synthesis_batch_size = args.batch_size
    if args.save_dir is None:
        tag = f"-{args.log_tag}" if args.log_tag else ""
        args.save_dir = os.path.join("run", f"datafree-{args.method}", f"{args.dataset}-{args.teacher}-{args.student}{tag}")
    return args


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _map_reference_flags(args: argparse.Namespace, given: set) -> None:
    """Fast-Datafree's device, precision and launcher flags, honoured or named in a warning."""
    import torch

    if args.gpu is not None and "device" not in given:
        if torch.cuda.is_available():
            args.device = f"cuda:{args.gpu}"
        else:
            _warn(f"--gpu {args.gpu}: no CUDA on this machine, running on the CPU (as the reference does)")
            args.device = "cpu"
    if args.fp16 and "amp" not in given:
        if torch.cuda.is_available() and args.device != "cpu":
            args.amp = "fp16"
        else:
            _warn("--fp16: fp16 needs CUDA; the training steps run in fp32")
    if args.print_freq is not None and "log_every" not in given and args.print_freq > 0:
        args.log_every = args.print_freq
    for flag in ("multiprocessing_distributed", "world_size", "rank", "dist_url", "dist_backend"):
        if flag in given:
            _warn(f"--{flag} is not used: launch several processes with torchrun --nproc_per_node N instead "
                  "(the reference's distributed path was never finished)")
    if "start_epoch" in given:
        _warn("--start_epoch is not used: --resume restores the epoch from the checkpoint")
    if args.pretrained:
        _warn("--pretrained is not used: the teacher is always loaded from its checkpoint")


def teacher_path(args: argparse.Namespace) -> str:
    """--teacher_ckpt, else run/teachers/<dataset>_<teacher>/best.pt, else the reference's path."""
    if args.teacher_ckpt:
        return args.teacher_ckpt
    ours = os.path.join("run", "teachers", f"{args.dataset}_{args.teacher}", "best.pt")
    theirs = REFERENCE_TEACHER.format(dataset=args.dataset, teacher=args.teacher)
    return ours if os.path.exists(ours) or not os.path.exists(theirs) else theirs


def dataset_for(args: argparse.Namespace):
    """The dataset spec: the registry's, with --num_classes / --img_size / --mean / --std on top;
    a name outside the registry needs all four (and --no_eval, having no test set here)."""
    from registry.datasets import DatasetSpec, list_datasets

    if args.mean is not None and args.std is not None and len(args.mean) != len(args.std):
        raise UsageError(f"--mean has {len(args.mean)} values and --std {len(args.std)}: give one per channel")
    require_positive(num_classes=args.num_classes, img_size=args.img_size)
    if args.std is not None and any(v <= 0 for v in args.std):
        raise UsageError(f"--std {' '.join(map(str, args.std))}: every value must be positive")
    if args.dataset in list_datasets():
        spec = dataset_spec(args.dataset)
        changes = {k: v for k, v in (("num_classes", args.num_classes), ("image_size", args.img_size),
                                     ("mean", tuple(args.mean) if args.mean else None),
                                     ("std", tuple(args.std) if args.std else None)) if v is not None}
        if args.mean is not None:
            changes["in_chans"] = len(args.mean)
        return dataclasses.replace(spec, **changes)
    if not args.no_eval:
        raise UsageError(f"--dataset {args.dataset} is not in the registry, so there is no test set to report on: "
                         f"pass --no_eval (registered: {', '.join(list_datasets())})")
    size = args.img_size
    return DatasetSpec(args.dataset, args.num_classes, len(args.mean), size, tuple(args.mean), tuple(args.std),
                       "rrc_flip" if size >= 128 else "crop_flip", pad=4 if size <= 64 else 0, kind="custom")


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model or data: names, numbers, the schedule, the weights."""
    for flag in ("teacher", "student"):
        setattr(args, flag, canonical_name(getattr(args, flag)))
    require_positive(batch_size=args.batch_size, synthesis_batch_size=args.synthesis_batch_size,
                     epochs=args.epochs, kd_steps=args.kd_steps, ep_steps=args.ep_steps, g_steps=args.g_steps,
                     lr=args.lr, lr_g=args.lr_g, nz=args.nz, ngf=args.ngf, T=args.T, log_every=args.log_every,
                     pool_capacity=args.pool_capacity, z_reinit=args.z_reinit if args.meta_z else None)
    require_nonnegative(warmup=args.warmup, weight_decay=args.weight_decay, momentum=args.momentum,
                        eta_min=args.eta_min, lr_z=args.lr_z, **{k: getattr(args, k) for k in LOSS_WEIGHTS},
                        bn_mmt=args.bn_mmt, workers=args.workers, pool_device_gb=args.pool_device_gb,
                        pool_host_gb=args.pool_host_gb)
    if args.warmup >= args.epochs:
        raise UsageError(f"--warmup {args.warmup} >= --epochs {args.epochs}: the student would never be trained "
                         "(warm-up epochs synthesize only)")
    if args.kd_steps > args.ep_steps:
        raise UsageError(f"--kd_steps {args.kd_steps} > --ep_steps {args.ep_steps}: a synthesis round's student "
                         "steps cannot exceed the epoch's")
    cls = SYNTHESIZERS[args.method]
    used = [k for k in LOSS_WEIGHTS if k in cls.SHARED_FLAGS | cls.reads]
    if all(getattr(args, k) == 0 for k in used):
        raise UsageError(f"every synthesis loss weight {args.method} uses is zero ({', '.join('--' + k for k in used)}):"
                         " the generator would have nothing to learn")
    if args.is_maml not in (0, 1, 2):
        raise UsageError(f"--is_maml {args.is_maml}: 1 FOMAML, 0 Reptile or 2 second-order")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: continue the run in --save_dir, or replace it, not both")
    if args.evaluate_only and args.no_eval:
        raise UsageError("--evaluate_only and --no_eval: there is nothing to evaluate on")
    if args.export_images and not cls.uses_pool:
        raise UsageError(f"--export_images: {args.method} draws fresh generator batches and keeps no image set")
    check_file("teacher_ckpt", args.teacher_ckpt, "checkpoint")
    check_file("cmi_init", args.cmi_init, "file or folder")
    check_file("config", args.config)


def resume_checks(args: argparse.Namespace, resume: str) -> dict:
    """The resume checkpoint must be this method's, models' and dataset's; flags that the saved
    state fixes must not change; --epochs may (the schedule is re-planned)."""
    parser = build_parser()
    plan = synthesis_flags(parser) | {"batch_size", "synthesis_batch_size", "kd_steps", "ep_steps", "warmup", "lr",
                                      "momentum", "weight_decay", "eta_min", "T", "kd_loss", "seed"}
    loss = student_loss(args.method, args.kd_loss, args.T)  # the checkpoint records the loss that ran
    current = {**vars(args), "kd_loss": loss.loss, "T": loss.T}
    return check_resume(resume, "datafree", {k: getattr(args, k) for k in ("method", "teacher", "student", "dataset")},
                        current, fixed=sorted(plan - {"pool_spill_dir", "cmi_init"}), replannable=["epochs"],
                        same_processes="its own pool shard")


def preflight(args: argparse.Namespace, argv: Optional[list]):
    """Everything checked, nothing written: returns the dataset spec, the synthesis config, the
    device, both models (the teacher with its weights, unless the quick one is still to be
    trained), the teacher's path, the resume checkpoint and the test loader."""
    from engine.checkpoint import find_resume_path

    spec = dataset_for(args)
    check_args(args)
    # the teacher family's statistics (akamaster, chenyaofo), unless --mean/--std say otherwise
    args.normalization = model_normalization(args.teacher, spec.name) if args.mean is None else None
    if args.normalization:  # the teacher's checkpoints expect other statistics than the dataset's
        spec = dataclasses.replace(spec, mean=args.normalization[0], std=args.normalization[1])
    syn = synthesis_config(args, spec)
    warn_unused(args, syn, argv)
    device = check_device(args.device)
    resume = find_resume_path(args.resume, args.save_dir)
    if not args.evaluate_only:
        check_output_dir(args.save_dir, resume, args.overwrite)
        if resume:
            resume_checks(args, resume)
    teacher = get_model(args.teacher, num_classes=spec.num_classes, in_chans=spec.in_chans)
    student = get_model(args.student, num_classes=spec.num_classes, in_chans=spec.in_chans)
    probe_models({"student": student}, spec.num_classes, spec.in_chans, spec.image_size)
    ckpt = None
    if not (args.quick and args.teacher_ckpt is None):  # the quick teacher is trained after the checks
        ckpt = teacher_path(args)
        if not os.path.exists(ckpt):
            raise UsageError(f"no teacher checkpoint at {ckpt}: pass --teacher_ckpt, or train one with "
                             f"python cifar100.py --model {args.teacher} --dataset {args.dataset}")
        load_weights(teacher, ckpt)
        probe_models({"teacher": teacher}, spec.num_classes, spec.in_chans, spec.image_size)
    # the data: the test split is read (or found missing) now, before the run folder exists
    test_loader = None if args.no_eval else build_loader(
        args.dataset, "test", 256, device, args.data_root, workers=args.workers, download=not args.no_download,
        normalization=args.normalization or (spec.mean, spec.std))
    if test_loader is not None and args.num_classes is not None and int(test_loader.labels_cpu.max()) >= spec.num_classes:
        raise UsageError(f"--num_classes {spec.num_classes}: the {args.dataset} test set has labels up to "
                         f"{int(test_loader.labels_cpu.max())}")
    return spec, syn, device, teacher, student, ckpt, resume, test_loader


def synthesis_config(args: argparse.Namespace, spec) -> SynthesisConfig:
    """The synthesis settings of a command line on dataset ``spec``."""
    return SynthesisConfig(
        num_classes=spec.num_classes, img_size=spec.image_size, nc=spec.in_chans, mean=spec.mean, std=spec.std,
        batch_size=args.synthesis_batch_size, g_steps=args.g_steps, nz=args.nz, ngf=args.ngf,
        lr_g=args.lr_g, lr_z=args.lr_z,
        bn=args.bn, oh=args.oh, adv=args.adv, act=args.act, balance=args.balance, bn_mmt=args.bn_mmt,
        is_maml=args.is_maml, maml_truncate=args.maml_truncate, reset_l0=bool(args.reset_l0), reset_bn=bool(args.reset_bn),
        reset_epoch=args.reset_epoch, warmup=args.warmup, balanced_targets=args.balanced_targets,
        pool_storage=args.pool_storage, pool_capacity=args.pool_capacity, pool_device_gb=args.pool_device_gb,
        pool_host_gb=args.pool_host_gb, pool_spill_dir=args.pool_spill_dir, cr=args.cr, cr_T=args.cr_T,
        cmi_layers=args.cmi_layers,
        pad=spec.pad if spec.train_aug in ("crop", "crop_flip") else 0,
        flip=spec.train_aug in ("crop_flip", "rrc_flip"),
        augment="rrc_flip" if spec.train_aug == "rrc_flip" else "crop_flip", generator=args.generator,
        # ImageNet-style sets: KD samples get the train transform, RandomResizedCrop(0.08-1) + flip
        kd_augment="rrc_flip" if spec.train_aug == "rrc_flip" else None,
        keep=args.keep, meta_z=args.meta_z, lr_g_meta=args.lr_g_meta, lr_z_meta=args.lr_z_meta,
        z_reinit=args.z_reinit, reptile_scale=args.reptile_scale,
        opt_impl=args.opt_impl, seed=args.seed, amp=args.syn_amp, compile=args.compile)


def run(argv: Optional[list] = None) -> dict:
    args = parse_args(argv)
    spec, syn, device, teacher, student, ckpt, resume, test_loader = preflight(args, argv)
    if args.dry_run:
        print(f"dry run: {args.method} {args.teacher} -> {args.student} on {args.dataset}, teacher {ckpt or 'quick'}, "
              f"{args.epochs} epochs ({args.warmup} warm-up) x {args.ep_steps} steps, batch {args.batch_size}, "
              f"device {device}, output {args.save_dir}{' (resume ' + resume + ')' if resume else ''}; "
              f"recipe {args.recipe or '-'}; all checks passed, nothing written")
        return {"dry_run": True}
    if ckpt is None:  # --quick without a teacher: train the quick teacher (every other check has passed)
        import cifar100

        ckpt = args.teacher_ckpt = cifar100.ensure_quick_teacher(["--device", args.device]
                                                                 + (["--no_progress"] if args.no_progress else []))
        load_weights(teacher, ckpt)
        probe_models({"teacher": teacher}, spec.num_classes, spec.in_chans, spec.image_size)
    device, logger, resume = prepare_run(args, "datafree")
    # the models again, now that prepare_run has seeded: the student's initial weights (and every
    # later draw) follow --seed, in the order earlier builds used; the preflight copies only checked
    teacher = load_weights(get_model(args.teacher, num_classes=spec.num_classes, in_chans=spec.in_chans), ckpt)
    student = get_model(args.student, num_classes=spec.num_classes, in_chans=spec.in_chans)
    with logger:
        return _train(args, spec, syn, device, logger, resume, teacher, student, ckpt, test_loader)


def _train(args, spec, syn, device, logger, resume, teacher, student, ckpt, test_loader) -> dict:
    if test_loader is not None:
        t_acc = evaluate(teacher.to(device), test_loader, device)
        logger.info(f"teacher {args.teacher} ({ckpt}): test top1 {t_acc['top1']:.2f}")
    else:
        t_acc = {"top1": None}
        logger.info(f"teacher {args.teacher} ({ckpt}): --no_eval, no test set")
    if args.recipe:
        logger.info(f"defaults: {args.recipe}" + (f", then --config {args.config}" if args.config else ""))
    if args.normalization:
        logger.info(f"normalisation: mean {args.normalization[0]} std {args.normalization[1]} (the statistics "
                    f"{args.teacher}'s published checkpoints were trained with, not {args.dataset}'s own)")
    if args.evaluate_only:
        out = {"teacher_top1": t_acc["top1"]}
        if resume:
            load_weights(student, resume)
            out["student_top1"] = evaluate(student.to(device), test_loader, device)["top1"]
            logger.info(f"student {args.student} ({resume}): test top1 {out['student_top1']:.2f}")
        return out
    train = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                        schedule="cosine", eta_min=args.eta_min, amp=args.amp, log_every=args.log_every,
                        opt_impl=args.opt_impl, compile=args.compile,
                        save_dir=args.save_dir, progress=not args.no_progress)
    init = iter_image_set(args.cmi_init, spec.image_size, spec.in_chans) if args.cmi_init else None
    trainer = build_trainer(teacher, student, args.method, syn, train, test_loader, T=args.T,
                            kd_loss=args.kd_loss, batch_size=args.batch_size, kd_steps=args.kd_steps, ep_steps=args.ep_steps,
                            device=device, logger=logger, args=vars(args), init_images=init)
    if resume:
        trainer.resume(resume)
    metrics = trainer.fit()
    metrics["teacher_top1"] = t_acc["top1"]
    syn_time = trainer.source.syn_time_total
    metrics["time_synthesis"] = syn_time
    logger.write_json("metrics.json", metrics)
    if args.export:
        logger.info(f"student weights: {export_weights(student, args.export)}")
    if args.export_images:
        n = export_image_set(trainer.source.synth.pool, args.export_images)
        logger.info(f"synthetic images: {n} written to {args.export_images}")
    pct = lambda v: "-" if v is None or v < 0 else f"{v:.2f}"  # noqa: E731  (--no_eval: no accuracy)
    logger.info(f"teacher {args.teacher}: {pct(t_acc['top1'])} | student {args.student} ({args.method}): "
                f"last {pct(metrics['last_top1'])} best {pct(metrics['best_top1'])} | synthesis {syn_time:.1f}s, "
                f"total {metrics['time_total']:.1f}s | {args.save_dir}")
    return metrics


def main(argv: Optional[list] = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

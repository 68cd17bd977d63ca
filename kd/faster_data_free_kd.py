"""Data-free knowledge distillation: train a student from a teacher checkpoint alone.

    python kd/faster_data_free_kd.py --method fast_meta --teacher wrn40_2 --student wrn16_2 \\
        --dataset cifar100 --teacher_ckpt PATH --g_steps 10 --lr_g 2e-3 --lr_z 0.01 --adv 1.1 \\
        --oh 0.4 --bn 10 --bn_mmt 0.9 --T 20 --lr 0.2 --epochs 220 --warmup 20 --reset_l0 1
    python kd/faster_data_free_kd.py --method fast_meta --quick     # offline, a few minutes on CPU

Flags and defaults are those of Fast-Datafree's ``datafree_kd.py``; ``scripts/fast_cifar.sh``
holds the published settings. The real test set is used only to report accuracy each epoch.
Deviation: the student's cosine schedule spans ``epochs - warmup`` epochs (the reference
hard-codes 200, which equals that only for its 220/20 setting).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datafree import SYNTHESIZERS, SynthesisConfig  # noqa: E402
from datafree.api import build_trainer, student_loss  # noqa: E402
from datafree.pool import iter_image_set  # noqa: E402
from engine.checkpoint import load_weights  # noqa: E402
from engine.data import build_loader  # noqa: E402
from engine.launch import add_common_args, apply_preset, given_flags, prepare_run, run_main  # noqa: E402
from engine.trainer import TrainConfig, evaluate  # noqa: E402
from registry.datasets import dataset_spec  # noqa: E402
from registry.models import get_model  # noqa: E402

# --quick: distil the cifar100.py --quick ResNet-8 teacher (78k parameters) into LeNet-5-BN (62k)
# on the offline digits set, about 90 s on 2 CPU cores. The generator is half the published width
# (ngf 32) to fit that budget; everything else follows the Fast-5 recipe, scaled down.
QUICK = dict(teacher="resnet8", student="lenet5_bn", dataset="digits", epochs=12, warmup=1,
             batch_size=128, synthesis_batch_size=128, kd_steps=20, ep_steps=40, g_steps=5, lr=0.1,
             lr_g=3e-3, lr_z=0.01, adv=1.0, bn=10.0, oh=0.5, bn_mmt=0.9, T=20.0, reset_l0=0, ngf=32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="fast_meta", help=f"one of: {', '.join(sorted(SYNTHESIZERS))}")
    p.add_argument("--teacher", default="wrn40_2")
    p.add_argument("--student", default="wrn16_1")
    p.add_argument("--teacher_ckpt", default=None, help="teacher weights (default run/teachers/<dataset>_<teacher>/best.pt)")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--batch_size", type=int, default=128, help="KD batch size")
    p.add_argument("--synthesis_batch_size", type=int, default=None, help="default: --batch_size")
    p.add_argument("--lr", type=float, default=0.1, help="student SGD learning rate")
    p.add_argument("--weight_decay", type=float, default=1e-4)
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
    g.add_argument("--g_steps", type=int, default=1, help="generator steps per round")
    g.add_argument("--nz", type=int, default=None, help="latent size (default 512 for dafl, else 256)")
    g.add_argument("--ngf", type=int, default=64, help="generator width (the reference's 64)")
    g.add_argument("--lr_g", type=float, default=1e-3)
    g.add_argument("--lr_z", type=float, default=1e-3)
    g.add_argument("--adv", type=float, default=0.0, help="weight of the adversarial term")
    g.add_argument("--bn", type=float, default=0.0, help="weight of the BN-statistics term")
    g.add_argument("--oh", type=float, default=0.0, help="weight of the one-hot (CE) term")
    g.add_argument("--act", type=float, default=0.0, help="weight of DAFL's activation term")
    g.add_argument("--balance", type=float, default=0.0, help="weight of the class-balance term")
    g.add_argument("--bn_mmt", type=float, default=0.0, help="momentum of the BN-statistics EMA")
    g.add_argument("--is_maml", type=int, default=1, help="1 FOMAML (trajectory sum), 0 Reptile, 2 second-order")
    g.add_argument("--maml_truncate", type=int, default=None,
                   help="--is_maml 2: back-propagate through the last K inner steps only (bounds memory; 0 = FOMAML)")
    g.add_argument("--reset_l0", type=int, default=0, help="re-initialise the generator's first layer at --reset_epoch")
    g.add_argument("--reset_bn", type=int, default=0, help="reset the generator's BN layers at --reset_epoch")
    g.add_argument("--reset_epoch", type=int, default=None,
                   help="epoch (1-based, as the log counts) of --reset_l0/--reset_bn; default warmup + 120 "
                        "(the reference's round 120 + warmup at one round per epoch)")
    g.add_argument("--balanced_targets", action="store_true", help="equal share of each class per batch")
    g.add_argument("--cr", type=float, default=1.0, help="CMI: weight of the contrastive term")
    g.add_argument("--cr_T", type=float, default=0.5, help="CMI: contrastive temperature")
    g.add_argument("--cmi_layers", nargs="+", default=None,
                   help="CMI: feature taps ('module' or 'module:in'); default the inputs of every teacher BN. "
                        "The reference uses the inputs of layer1..layer4 for ResNet-34: layer1:in layer2:in ...")
    g.add_argument("--cmi_init", default=None, help="folder or .pt of pre-synthesised images to start the pool")
    g.add_argument("--generator", default="auto", choices=["auto", "dcgan", "deep"],
                   help="dcgan (z vector) or deep (spatial z, ImageNet size); auto: deep from 128 px")
    g.add_argument("--keep", default="best", choices=["best", "last"], help="which inner-step batch is pooled")
    g.add_argument("--meta_z", action="store_true", help="fast_meta: persistent, meta-learned latents")
    g.add_argument("--lr_g_meta", type=float, default=None, help="fast_meta meta lr of G (default lr_g * g_steps)")
    g.add_argument("--lr_z_meta", type=float, default=5e-3, help="fast_meta meta lr of the latents (--meta_z)")
    g.add_argument("--z_reinit", type=float, default=5.0,
                   help="with --meta_z: re-sample latents every N epochs, counted in rounds (default 5: the "
                        "logged ImageNet runs' every 50 rounds at 10 rounds per epoch)")
    g.add_argument("--reptile_scale", type=float, default=67.0, help="Reptile gradient factor (--is_maml 0)")
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
    p.add_argument("--log_tag", default="", help="suffix of the default --save_dir")
    p.add_argument("--evaluate_only", action="store_true", help="evaluate the teacher (and --resume student) and exit")
    p.add_argument("--quick", action="store_true", help="offline digits demo, a few minutes on CPU")
    return add_common_args(p)


SYNTHESIS_GROUP = "synthesis"


def synthesis_flags(parser: argparse.ArgumentParser) -> set:
    """The ``dest`` names of the method-dependent flags: the synthesis group, and --kd_loss."""
    group = next(g for g in parser._action_groups if g.title == SYNTHESIS_GROUP)
    return {a.dest for a in group._group_actions} | {"kd_loss"}


def warn_unused(args: argparse.Namespace, syn: SynthesisConfig, argv: Optional[list] = None) -> list:
    """One warning line per given flag that ``args.method`` does not use; returns the flags."""
    parser = build_parser()
    given = given_flags(parser, argv)
    cls = SYNTHESIZERS[args.method]
    unused = [f"--{f}" for f in cls.unused_flags(given & synthesis_flags(parser), syn)]
    if "T" in given and student_loss(args.method, args.kd_loss, args.T).loss == "l1":
        unused.append("--T (the L1 student loss has no temperature; --kd_loss kl uses it)")
    for flag in unused:
        print(f"warning: {args.method} does not use {flag}", file=sys.stderr)
    return unused


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        apply_preset(args, QUICK, argv)
    if args.nz is None and args.method in SYNTHESIZERS:
        args.nz = SYNTHESIZERS[args.method].default_nz
    if args.synthesis_batch_size is None:
        args.synthesis_batch_size = args.batch_size
    if args.save_dir is None:
        tag = f"-{args.log_tag}" if args.log_tag else ""
        args.save_dir = os.path.join("run", f"datafree-{args.method}", f"{args.dataset}-{args.teacher}-{args.student}{tag}")
    return args


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
    spec = dataset_spec(args.dataset)
    if args.method not in SYNTHESIZERS:
        raise KeyError(f"unknown data-free method {args.method!r}. Valid methods: {', '.join(sorted(SYNTHESIZERS))}")
    syn = synthesis_config(args, spec)
    warn_unused(args, syn, argv)
    if args.quick and args.teacher_ckpt is None:
        import cifar100

        args.teacher_ckpt = cifar100.ensure_quick_teacher(["--device", args.device]
                                                          + (["--no_progress"] if args.no_progress else []))
    ckpt = args.teacher_ckpt or os.path.join("run", "teachers", f"{args.dataset}_{args.teacher}", "best.pt")
    device, logger, resume = prepare_run(args, "datafree")
    teacher = get_model(args.teacher, num_classes=spec.num_classes, in_chans=spec.in_chans)
    load_weights(teacher, ckpt)
    student = get_model(args.student, num_classes=spec.num_classes, in_chans=spec.in_chans)
    test_loader = build_loader(args.dataset, "test", 256, device, args.data_root, workers=args.workers,
                               download=not args.no_download)
    t_acc = evaluate(teacher.to(device), test_loader, device)
    logger.info(f"teacher {args.teacher} ({ckpt}): test top1 {t_acc['top1']:.2f}")
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
    logger.info(f"teacher {args.teacher}: {t_acc['top1']:.2f} | student {args.student} ({args.method}): "
                f"last {metrics['last_top1']:.2f} best {metrics['best_top1']:.2f} | synthesis {syn_time:.1f}s, "
                f"total {metrics['time_total']:.1f}s | {args.save_dir}")
    logger.close()
    return metrics


def main(argv: Optional[list] = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Train a teacher (or any registered model) from scratch with cross-entropy.

Default: WRN-40-2 on CIFAR-100 with the CRD / RepDistiller recipe (``train_teacher.py``):
240 epochs, SGD lr 0.05 (0.01 for MobileNetV2 / ShuffleNet, as RepDistiller does), momentum
0.9, weight decay 5e-4, batch 64, lr x0.1 at epochs 150, 180 and 210.

``--quick`` trains a small teacher on scikit-learn's bundled ``digits`` set (offline, about a
minute on 2 CPU cores) and prints its test accuracy; the data-free quick path reuses it.

    python cifar100.py                                   # WRN-40-2, CIFAR-100
    python cifar100.py --model resnet32x4 --dataset cifar100
    python cifar100.py --quick
    python cifar100.py --model resnet32x4 --learning_rate 0.05 --lr_decay_epochs 150,180,210 --trial 1  # RepDistiller

RepDistiller's ``train_teacher.py`` flags are accepted: ``--learning_rate``, ``--lr_decay_epochs``
(comma-separated), ``--lr_decay_rate``, ``--num_workers``, ``--print_freq``, ``-t/--trial`` (a tag
in the default ``--save_dir``), and ``--tb_freq`` / ``--save_freq`` (warned about: every epoch
writes ``last.pt``). Everything is checked before the run folder is created.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from engine.data import build_loader
from engine.checkpoint import find_resume_path
from engine.launch import (Parser, add_common_args, apply_preset, given_flags, load_config, prepare_run,
                           resume_after_restart, run_main)
from engine.objective import CrossEntropyObjective
from engine.preflight import UsageError, check_device, check_file, check_output_dir, check_resume, require_nonnegative, \
    require_positive
from engine.trainer import TrainConfig, Trainer
from registry.datasets import canonical_dataset, dataset_spec
from registry.models import canonical_name, get_model, model_normalization

SMALL_LR_MODELS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # RepDistiller uses lr 0.01 for these

# The --quick recipe: a BatchNorm CNN (so data-free synthesis can match its BN statistics)
# on the offline digits set.
QUICK = dict(model="resnet8", dataset="digits", epochs=15, lr=0.05, batch_size=64,
             schedule="cosine", data_root="./data/torchdata")
QUICK_SAVE_DIR = os.path.join("run", "teachers", "digits_resnet8")


def ensure_quick_teacher(extra_args: Optional[list] = None) -> str:
    """Path of the ``--quick`` teacher's ``best.pt``, training it first if it is not there."""
    path = os.path.join(QUICK_SAVE_DIR, "best.pt")
    status = None
    if os.path.exists(os.path.join(QUICK_SAVE_DIR, "metrics.json")):
        import json

        with open(os.path.join(QUICK_SAVE_DIR, "metrics.json")) as f:
            status = json.load(f).get("status")
    if status != "finished":  # missing, or a training that was interrupted: (re)start it
        resume = ["--resume"] if os.path.exists(os.path.join(QUICK_SAVE_DIR, "last.pt")) else []
        print(f"no finished quick teacher at {path}: training it (python cifar100.py --quick {' '.join(resume)})")
        train(["--quick"] + resume + list(extra_args or []))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wrn40_2")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--epochs", type=int, default=240)
    p.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=None,
                   help="default 0.05 (0.01 for MobileNetV2/ShuffleNet)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="multistep", choices=["multistep", "cosine", "constant"])
    p.add_argument("--milestones", type=int, nargs="+", default=[150, 180, 210])
    p.add_argument("--lr_decay_epochs", default=None, help="RepDistiller's spelling of --milestones: 150,180,210")
    p.add_argument("--gamma", "--lr_decay_rate", dest="gamma", type=float, default=0.1)
    p.add_argument("-t", "--trial", default=None, help="run tag (RepDistiller): the default --save_dir gets _trial_<t>")
    p.add_argument("--num_workers", type=int, default=None, help="RepDistiller's spelling of --workers")
    p.add_argument("--print_freq", type=int, default=None, help="RepDistiller's spelling of --log_every")
    for flag in ("--tb_freq", "--save_freq"):
        p.add_argument(flag, type=int, default=None, help="accepted, no effect: last.pt is written every epoch")
    p.add_argument("--quick", action="store_true", help="small teacher on the offline digits set (~1 min on CPU)")
    p.add_argument("--evaluate_only", action="store_true", help="evaluate --resume/--ckpt weights and exit")
    p.add_argument("--ckpt", default=None, help="weights to evaluate with --evaluate_only")
    p.add_argument("--saliencymix", type=float, default=0.0, metavar="P",
                   help="SaliencyMix probability per batch (0: off; the reference uses 0.5)")
    p.add_argument("--saliencymix_variant", default="batched", choices=["batched", "reference"],
                   help="batched: per-image saliency on the device; reference: one image's box for the batch")
    p.add_argument("--saliencymix_beta", type=float, default=1.0, help="lambda ~ Beta(beta, beta)")
    return add_common_args(p)


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    args.job = "teacher"
    given = given_flags(p, argv)
    if args.config:
        config = load_config(args.config, p)
        apply_preset(args, config, given)
        given |= set(config)
    if args.quick:
        apply_preset(args, {**QUICK, "save_dir": QUICK_SAVE_DIR}, given)
    args.model = canonical_name(args.model)
    args.dataset = canonical_dataset(args.dataset)
    if args.lr is None:
        args.lr = 0.01 if args.model in SMALL_LR_MODELS else 0.05
    if args.lr_decay_epochs is not None:
        try:
            args.milestones = [int(e) for e in str(args.lr_decay_epochs).split(",") if e.strip()]
        except ValueError:
            raise UsageError(f"--lr_decay_epochs {args.lr_decay_epochs!r}: expected comma-separated integers") from None
    if args.num_workers is not None and "workers" not in given:
        args.workers = args.num_workers
    if args.print_freq is not None and "log_every" not in given:
        args.log_every = args.print_freq
    for flag in ("tb_freq", "save_freq"):
        if getattr(args, flag) is not None:
            print(f"warning: --{flag} has no effect here: last.pt (and best.pt) are written every epoch", file=sys.stderr)
    if not 0.0 <= args.saliencymix <= 1.0:
        raise UsageError(f"--saliencymix {args.saliencymix}: a probability in [0, 1]")
    if args.save_dir is None:
        trial = f"_trial_{args.trial}" if args.trial is not None else ""
        args.save_dir = os.path.join("run", "teachers", f"{args.dataset}_{args.model}{trial}")
    return args


def check_args(args: argparse.Namespace) -> Optional[str]:
    """Every check before the run folder is created; returns the resume checkpoint, if any."""
    require_positive(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, log_every=args.log_every)
    require_nonnegative(momentum=args.momentum, weight_decay=args.weight_decay, gamma=args.gamma, workers=args.workers)
    if args.schedule == "multistep" and any(m <= 0 for m in args.milestones):
        raise UsageError(f"--milestones {args.milestones}: epochs must be positive")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: continue the run in --save_dir, or replace it, not both")
    check_file("ckpt", args.ckpt, "checkpoint")
    check_device(args.device)
    resume = find_resume_path(args.resume, args.save_dir)
    if not args.evaluate_only:
        check_output_dir(args.save_dir, resume, args.overwrite)
        if resume:
            check_resume(resume, "teacher", {"model": args.model, "dataset": args.dataset}, vars(args),
                         fixed=["lr", "batch_size", "momentum", "weight_decay", "schedule", "milestones", "gamma", "seed"],
                         replannable=["epochs"])
    return resume


def train(argv: Optional[list] = None) -> dict:
    """Train (or evaluate) a model; returns the metrics written to ``metrics.json``."""
    args = parse_args(argv)
    resume_after_restart(args)
    spec = dataset_spec(args.dataset)
    resume = check_args(args)
    model = get_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans)
    device = check_device(args.device)
    load = dict(device=device, data_root=args.data_root, pipeline=args.pipeline, workers=args.workers,
                download=not args.no_download, normalization=model_normalization(args.model, spec.name))
    test_loader = build_loader(args.dataset, "test", 256, **load)  # the data is found (or not) before any write
    if args.evaluate_only:  # the weights are read (or refused) before any write too
        from engine.checkpoint import load_weights

        weights = args.ckpt or resume or os.path.join(args.save_dir, "best.pt")
        check_file("ckpt", weights, "checkpoint")
        load_weights(model, weights)
    if args.dry_run:
        print(f"dry run: {args.model} on {args.dataset}, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, "
              f"device {device}, output {args.save_dir}; all checks passed, nothing written")
        return {"dry_run": True}
    device, logger, resume = prepare_run(args, "teacher")
    # built again after seeding: the initial weights follow --seed (the first build only checked the name)
    if not args.evaluate_only:
        model = get_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans)
    with logger:
        return _fit(args, spec, model, device, logger, resume, load, test_loader)


def _fit(args, spec, model, device, logger, resume, load, test_loader) -> dict:
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      schedule=args.schedule, milestones=args.milestones, gamma=args.gamma, amp=args.amp,
                      opt_impl=args.opt_impl, compile=args.compile,
                      log_every=args.log_every, save_dir=args.save_dir, progress=not args.no_progress)
    if args.evaluate_only:
        from engine.trainer import evaluate

        metrics = evaluate(model.to(device), test_loader, device)
        logger.info(f"{args.model} on {args.dataset} test: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}")
        return metrics
    train_loader = build_loader(args.dataset, "train", args.batch_size, seed=args.seed, **load)
    if args.saliencymix > 0:
        from engine.saliency import SaliencyMix

        train_loader = SaliencyMix(train_loader, p=args.saliencymix, variant=args.saliencymix_variant,
                                   num_classes=spec.num_classes, beta=args.saliencymix_beta,
                                   mean=(load["normalization"] or (spec.mean, spec.std))[0],
                                   std=(load["normalization"] or (spec.mean, spec.std))[1])
    trainer = Trainer(CrossEntropyObjective(model), train_loader, test_loader, cfg, device, logger, vars(args))
    if resume:
        trainer.resume(resume)
    logger.info(f"training {args.model} on {args.dataset}: {len(train_loader)} steps/epoch, "
                f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    metrics = trainer.fit()
    if args.export:
        from engine.checkpoint import export_weights

        logger.info(f"weights: {export_weights(model, args.export)}")
    logger.info(f"done: {args.model} on {args.dataset} test top1 last {metrics['last_top1']:.2f} "
                f"best {metrics['best_top1']:.2f} (epoch {metrics['best_epoch']}); "
                f"{metrics['time_total']:.1f}s; checkpoints in {args.save_dir}")
    return metrics


def main(argv: Optional[list] = None) -> int:
    return run_main(train, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Train a teacher (or any registered model) from scratch with cross-entropy.

Default: WRN-40-2 on CIFAR-100 with the CRD / RepDistiller recipe (``train_teacher.py``):
240 epochs, SGD lr 0.05 (0.01 for MobileNetV2 / ShuffleNet, as RepDistiller does), momentum
0.9, weight decay 5e-4, batch 64, lr x0.1 at epochs 150, 180 and 210.

``--quick`` trains a small teacher on scikit-learn's bundled ``digits`` set (offline, about a
minute on 2 CPU cores) and prints its test accuracy; the data-free quick path reuses it.

    python cifar100.py                                   # WRN-40-2, CIFAR-100
    python cifar100.py --model resnet32x4 --dataset cifar100
    python cifar100.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from engine.data import build_loader
from engine.launch import add_common_args, apply_preset, prepare_run, run_main
from engine.objective import CrossEntropyObjective
from engine.trainer import TrainConfig, Trainer
from registry.datasets import dataset_spec
from registry.models import canonical_name, get_model

SMALL_LR_MODELS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # RepDistiller uses lr 0.01 for these

# The --quick recipe: a BatchNorm CNN (so data-free synthesis can match its BN statistics)
# on the offline digits set.
QUICK = dict(model="resnet8", dataset="digits", epochs=15, lr=0.05, batch_size=64,
             schedule="cosine", data_root="./data/torchdata")
QUICK_SAVE_DIR = os.path.join("run", "teachers", "digits_resnet8")


def ensure_quick_teacher(extra_args: Optional[list] = None) -> str:
    """Path of the ``--quick`` teacher's ``best.pt``, training it first if it is not there."""
    path = os.path.join(QUICK_SAVE_DIR, "best.pt")
    if not os.path.exists(path):
        print(f"no quick teacher at {path}: training it (python cifar100.py --quick)")
        train(["--quick"] + list(extra_args or []))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wrn40_2")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--epochs", type=int, default=240)
    p.add_argument("--lr", type=float, default=None, help="default 0.05 (0.01 for MobileNetV2/ShuffleNet)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="multistep", choices=["multistep", "cosine", "constant"])
    p.add_argument("--milestones", type=int, nargs="+", default=[150, 180, 210])
    p.add_argument("--gamma", type=float, default=0.1)
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
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        apply_preset(args, {**QUICK, "save_dir": QUICK_SAVE_DIR}, argv)
    if args.lr is None:
        args.lr = 0.01 if canonical_name(args.model) in SMALL_LR_MODELS else 0.05
    if not 0.0 <= args.saliencymix <= 1.0:
        raise ValueError(f"--saliencymix {args.saliencymix}: a probability in [0, 1]")
    if args.save_dir is None:
        args.save_dir = os.path.join("run", "teachers", f"{args.dataset}_{args.model}")
    return args


def train(argv: Optional[list] = None) -> dict:
    """Train (or evaluate) a model; returns the metrics written to ``metrics.json``."""
    args = parse_args(argv)
    spec = dataset_spec(args.dataset)
    device, logger, resume = prepare_run(args, "teacher")
    model = get_model(args.model, num_classes=spec.num_classes, in_chans=spec.in_chans)
    load = dict(device=device, data_root=args.data_root, pipeline=args.pipeline, workers=args.workers,
                download=not args.no_download)
    test_loader = build_loader(args.dataset, "test", 256, **load)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      schedule=args.schedule, milestones=args.milestones, gamma=args.gamma, amp=args.amp,
                      opt_impl=args.opt_impl, compile=args.compile,
                      log_every=args.log_every, save_dir=args.save_dir, progress=not args.no_progress)
    if args.evaluate_only:
        from engine.checkpoint import load_weights
        from engine.trainer import evaluate

        load_weights(model, args.ckpt or resume or os.path.join(args.save_dir, "best.pt"))
        metrics = evaluate(model.to(device), test_loader, device)
        logger.info(f"{args.model} on {args.dataset} test: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}")
        return metrics
    train_loader = build_loader(args.dataset, "train", args.batch_size, seed=args.seed, **load)
    if args.saliencymix > 0:
        from engine.saliency import SaliencyMix

        train_loader = SaliencyMix(train_loader, p=args.saliencymix, variant=args.saliencymix_variant,
                                   num_classes=spec.num_classes, beta=args.saliencymix_beta,
                                   mean=spec.mean, std=spec.std)
    trainer = Trainer(CrossEntropyObjective(model), train_loader, test_loader, cfg, device, logger, vars(args))
    if resume:
        trainer.resume(resume)
    logger.info(f"training {args.model} on {args.dataset}: {len(train_loader)} steps/epoch, "
                f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    metrics = trainer.fit()
    logger.info(f"done: {args.model} on {args.dataset} test top1 last {metrics['last_top1']:.2f} "
                f"best {metrics['best_top1']:.2f} (epoch {metrics['best_epoch'] + 1}); "
                f"{metrics['time_total']:.1f}s; checkpoints in {args.save_dir}")
    logger.close()
    return metrics


def main(argv: Optional[list] = None) -> int:
    return run_main(train, argv)


if __name__ == "__main__":
    sys.exit(main())

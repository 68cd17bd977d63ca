"""Command-line plumbing shared by the entry scripts (teacher training, KD, data-free KD)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch

from engine.checkpoint import find_resume_path
from engine.logger import RunLogger
from engine.utils import library_versions, resolve_device, seed_everything


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags every job shares: data location, device, precision, seed, resume, output."""
    g = p.add_argument_group("run")
    g.add_argument("--data_root", default="./data/torchdata", help="dataset folder (downloaded into when online)")
    g.add_argument("--save_dir", default=None, help="output folder (checkpoints, log.txt, TensorBoard, metrics.json)")
    g.add_argument("--seed", type=int, default=0, help="seeds Python, NumPy, torch and the image pool's shuffle")
    g.add_argument("--deterministic", action="store_true",
                   help="cudnn.deterministic on and cudnn.benchmark off (slower on CUDA; bitwise-repeatable convolutions)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="precision of the training steps: auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 also "
                        "on CPU when asked for; fp16 (with loss scaling) on CUDA only. Test-set evaluation is always fp32")
    g.add_argument("--opt_impl", default="auto", choices=["auto", "fused", "foreach", "loop"],
                   help="optimiser kernels (auto = fused on CPU and CUDA); results differ only by rounding")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's forward (and the data-free generator); "
                        "pays a compile time up front, worth it for long CUDA runs")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from <save_dir>/last.pt, or from the given checkpoint")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers for image-folder datasets")
    g.add_argument("--pipeline", default="tensor", choices=["tensor", "pil"],
                   help="tensor: whole split on the device, per-batch augmentation; pil: classic DataLoader")
    g.add_argument("--log_every", type=int, default=50, help="steps between loss checks / progress updates")
    g.add_argument("--no_download", action="store_true", help="never try to download datasets")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    return p


def apply_preset(args: argparse.Namespace, preset: dict, argv: Optional[list] = None) -> set:
    """Set each preset value unless that flag was given on the command line (so ``--quick
    --epochs 3`` keeps 3). Returns the names of the flags that were given."""
    given = {a.split("=")[0].lstrip("-") for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    for k, v in preset.items():
        if k not in given:
            setattr(args, k, v)
    return given


def given_flags(parser: argparse.ArgumentParser, argv: Optional[list] = None) -> set:
    """The ``dest`` names of the options given on the command line (``--x v``, ``--x=v`` and the
    abbreviations argparse accepts)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    options = parser._option_string_actions
    given = set()
    for token in argv:
        if not token.startswith("-") or token == "-" or token == "--":
            continue
        name = token.split("=", 1)[0]
        action = options.get(name)
        if action is None and name.startswith("--"):
            matches = [a for k, a in options.items() if k.startswith(name)]
            action = matches[0] if len({id(a) for a in matches}) == 1 else None
        if action is not None:
            given.add(action.dest)
    return given


def prepare_run(args: argparse.Namespace, name: str):
    """Seed, pick the device, create ``save_dir`` and its logger; find a resume checkpoint."""
    seed_everything(args.seed)
    if getattr(args, "deterministic", False):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    device = resolve_device(args.device)
    os.makedirs(args.save_dir, exist_ok=True)
    logger = RunLogger(args.save_dir, name=name)
    resume = find_resume_path(args.resume, args.save_dir)
    logger.info("command: " + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
    logger.info(f"device: {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
                f"output: {os.path.abspath(args.save_dir)}")
    return device, logger, resume


def run_main(fn, argv: Optional[list] = None) -> int:
    """Turn the engine's expected failures into one clear line and a non-zero exit code
    (set ``FASTDFKD_DEBUG=1`` to get the traceback instead)."""
    from engine.checkpoint import CheckpointMismatchError
    from engine.trainer import DivergenceError

    try:
        fn(argv)
        return 0
    except (DivergenceError, CheckpointMismatchError, KeyError, FileNotFoundError, ValueError) as e:
        if os.environ.get("FASTDFKD_DEBUG"):  # full traceback when debugging
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


__all__ = ["add_common_args", "apply_preset", "prepare_run", "run_main", "library_versions"]

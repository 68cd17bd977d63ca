"""Command-line plumbing shared by the entry scripts (teacher training, KD, data-free KD)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, Mapping, Optional

import torch

from engine import distributed
from engine.checkpoint import find_resume_path, remove_orphans
from engine.logger import RunLogger
from engine.preflight import UsageError, check_device, clear_run_outputs
from engine.utils import library_versions, seed_everything


class Parser(argparse.ArgumentParser):
    """``argparse`` with no abbreviations (``--epoch`` is not ``--epochs``, so a preset can never
    silently replace a flag the user gave) and usage errors as one line: the error, a close
    flag name when there is one, and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        import difflib

        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [t for t in message.split(":", 1)[1].split() if t.startswith("-")]
            close = [m for f in flags for m in difflib.get_close_matches(f.split("=")[0], list(self._option_string_actions), 1)]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
        self.exit(2, f"error: {message}{hint}; {self.prog} --help lists the flags\n")


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
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --save_dir (without it, such a folder is refused)")
    g.add_argument("--config", default=None, metavar="RECIPE.yaml",
                   help="flags as keys (e.g. recipes/fast_meta_cifar.yaml); the command line overrides them")
    g.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log to Weights & Biases (needs wandb installed; offline without an API key)")
    g.add_argument("--export", default=None, metavar="FILE.pt",
                   help="also write the trained model's final weights alone (a plain state dict: "
                        "model.load_state_dict(torch.load(FILE)) on the registry model)")
    g.add_argument("--dry_run", action="store_true",
                   help="check the whole command line (names, files, data, output folder), print the plan, "
                        "and exit without writing or training anything")
    g.add_argument("--workers", "-j", type=int, default=4, help="DataLoader workers for image-folder datasets")
    g.add_argument("--pipeline", default="tensor", choices=["tensor", "pil"],
                   help="tensor: whole split on the device, per-batch augmentation; pil: classic DataLoader")
    g.add_argument("--log_every", type=int, default=50, help="steps between loss checks / progress updates")
    g.add_argument("--no_download", action="store_true", help="never try to download datasets")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars")
    return p


def apply_preset(args: argparse.Namespace, preset: Mapping, given: Iterable[str]) -> None:
    """Set each preset value unless that flag was given on the command line (``given``: the
    ``dest`` names from :func:`given_flags`, so ``--quick --epochs 3`` keeps 3 whatever the
    spelling of ``--epochs``)."""
    given = set(given)
    for k, v in preset.items():
        if k not in given:
            setattr(args, k, v)


def _convert(action: argparse.Action, key: str, value, source: str):
    """A recipe value as the flag's parser would have produced it."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {key}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    convert = action.type or (lambda v: v)
    try:
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            items = value if isinstance(value, (list, tuple)) else str(value).split()
            out = [convert(v) if isinstance(v, str) or action.type in (int, float) else v for v in items]
        else:
            out = convert(value) if value is not None and (isinstance(value, str) or action.type in (int, float)) else value
    except (TypeError, ValueError):
        raise UsageError(f"{source}: {key}: cannot read {value!r} as {getattr(convert, '__name__', 'a value')}") from None
    if action.choices is not None and out is not None:
        for v in (out if isinstance(out, list) else [out]):
            if v not in action.choices:
                raise UsageError(f"{source}: {key}: {v!r} is not one of {', '.join(map(str, action.choices))}")
    return out


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a recipe file (YAML; keys are flag names, with or without ``--``, ``-`` or ``_``)
    into ``{dest: value}``, each value converted as its flag would be. Unknown keys list the
    valid ones."""
    from engine.recipes import read_recipe

    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file")
    try:
        data = read_recipe(path)
    except ValueError as e:
        raise UsageError(f"--config {e}") from None
    options = parser._option_string_actions
    out = {}
    for key, value in data.items():
        name = "--" + str(key).lstrip("-")
        action = options.get(name) or options.get("--" + name[2:].replace("-", "_"))
        if action is None or action.dest in ("config", "help"):
            valid = sorted({a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "config")})
            raise UsageError(f"--config {path}: unknown flag {key!r}. Valid keys: {', '.join(valid)}")
        out[action.dest] = _convert(action, str(key), value, f"--config {path}")
    return out


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
    """Seed, pick the device, create ``save_dir`` and its logger; find a resume checkpoint.
    Call it after every check: it is the first step that writes (``--overwrite`` first removes
    the earlier run's files)."""
    seed_everything(args.seed)
    if getattr(args, "deterministic", False):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    device = check_device(args.device)
    if getattr(args, "wandb", None):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:  # before the folder exists
            raise UsageError("--wandb: wandb is not installed (pip install wandb)")
    resume = find_resume_path(args.resume, args.save_dir)
    dist = distributed.current()
    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    main = dist.is_main
    removed = clear_run_outputs(args.save_dir) if main and getattr(args, "overwrite", False) and not resume else []
    if main:
        os.makedirs(args.save_dir, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
    logger = RunLogger(args.save_dir, name=name, wandb_project=getattr(args, "wandb", None), config=config)
    if removed:
        logger.info(f"--overwrite: removed the earlier run's {', '.join(removed)}")
    orphans = remove_orphans(args.save_dir) if main else []
    if orphans:
        logger.info(f"removed {len(orphans)} temporary file(s) an interrupted save left behind: {', '.join(orphans)}")
    logger.info("command: " + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
    restart = getattr(args, "elastic_restart", 0)
    if restart:
        logger.info(f"torchrun restart {restart}: " + (f"continuing from the last checkpoint in {args.save_dir}"
                                                        if getattr(args, "elastic_resumed", False) else
                                                        "no checkpoint was written yet, so the run starts again"))
    ranks = f" | world_size {dist.world_size} (torchrun)" if dist.enabled else ""
    logger.info(f"device: {device} | torch {torch.__version__} | threads {torch.get_num_threads()}{ranks} | "
                f"output: {os.path.abspath(args.save_dir)}")
    if dist.enabled:
        args.world_size = dist.world_size  # recorded in the checkpoints and metrics.json
    return device, logger, resume


def resume_after_restart(args: argparse.Namespace) -> None:
    """Under ``torchrun --max-restarts K``, workers that torchrun starts again (after one died)
    run the same command line: they continue the run from its ``last.pt`` (``--resume``), or,
    when the first attempt died before its first checkpoint, start it again (``--overwrite``)."""
    restart = distributed.elastic_restart()
    if restart == 0:
        return
    folder = args.save_dir
    saved = os.path.isdir(folder) and any("last.pt" in files for _, _, files in os.walk(folder))
    args.elastic_restart, args.elastic_resumed = restart, saved
    if saved:
        args.resume, args.overwrite = args.resume or "auto", False
    else:
        args.resume, args.overwrite = None, True


def run_main(fn, argv: Optional[list] = None) -> int:
    """Turn the engine's expected failures into one clear line and a non-zero exit code
    (set ``FASTDFKD_DEBUG=1`` to get the traceback instead)."""
    from engine.trainer import Interrupted

    dist = distributed.setup()  # joins torchrun's process group; nothing in a single process
    try:
        fn(argv)
        return 0
    except Interrupted as e:  # SIGINT/SIGTERM: the checkpoint is written; not an error
        if dist.is_main:
            print(str(e), file=sys.stderr)
        return e.exit_code
    except EXPECTED_ERRORS as e:
        if os.environ.get("FASTDFKD_DEBUG"):  # full traceback when debugging
            raise
        if dist.is_main:  # every rank runs the same checks: one line, not one per rank
            print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()


def error_line(e: BaseException) -> str:
    """An expected error as the one line the user sees (also written to ``log.txt``)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(msg)


def _expected_errors() -> tuple:
    from engine.checkpoint import CheckpointMismatchError
    from engine.trainer import DivergenceError

    # UsageError, CheckpointError are ValueErrors; DatasetUnavailable is a FileNotFoundError
    return (DivergenceError, CheckpointMismatchError, KeyError, FileNotFoundError, ValueError)


EXPECTED_ERRORS = _expected_errors()

__all__ = ["add_common_args", "apply_preset", "given_flags", "load_config", "prepare_run", "run_main",
           "library_versions", "EXPECTED_ERRORS", "error_line"]

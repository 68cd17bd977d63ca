"""Check that teacher checkpoints load, strictly, into the registry architecture their path names.

    python -m registry.check_teachers save/models                 # every checkpoint below it
    python -m registry.check_teachers save/models/resnet56_vanilla/ckpt_epoch_240.pth
    python -m registry.check_teachers save/models --num_classes 100

The architecture comes from the path exactly as ``kd/train.py`` reads it
(:func:`kd.train.infer_teacher_name`: RepDistiller's ``<arch>_vanilla/ckpt_epoch_240.pth``
folder name, or Fast-Datafree's ``<dataset>_<arch>.pth`` file name). The number of classes is
read from the checkpoint's classifier unless ``--num_classes`` is given. Weights are loaded with
:func:`engine.checkpoint.load_weights`, so a checkpoint that passes here also loads as
``kd/train.py``'s teacher. One line per checkpoint (``OK`` or ``FAIL`` with every missing,
unexpected and mis-shaped key); the exit status is 0 only when at least one checkpoint was
found and all of them load.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import List, Optional, Sequence, Tuple

import torch.nn as nn

from engine.checkpoint import (CheckpointMismatchError, extract_state_dict, load_checkpoint,
                               load_weights)
from registry.models import get_model

CHECKPOINT_EXTS = (".pth", ".pt", ".th")
DEFAULT_CLASSES = 100  # RepDistiller's released teachers are CIFAR-100 models


def find_checkpoints(root: str) -> List[str]:
    """``root`` itself when it is a file, else every checkpoint file below it, sorted."""
    if os.path.isfile(root):
        return [root]
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if f.endswith(CHECKPOINT_EXTS)]
    return sorted(found)


def _classifier_key(model: nn.Module) -> Optional[str]:
    """State-dict name of the weight of the model's last Linear layer."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def num_classes_in(arch: str, state_dict) -> int:
    """Rows of the classifier weight in ``state_dict`` (``DEFAULT_CLASSES`` if absent)."""
    key = _classifier_key(get_model(arch, num_classes=DEFAULT_CLASSES))
    weight = state_dict.get(key) if key else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else DEFAULT_CLASSES


def check_checkpoint(path: str, num_classes: Optional[int] = None) -> Tuple[bool, str]:
    """(loads?, one report line, plus the mismatch listing when it does not)."""
    from kd.train import infer_teacher_name  # the trainer's own reading of checkpoint paths

    arch = infer_teacher_name(path)
    if arch is None:
        return False, (f"FAIL {path}: cannot tell the architecture from the path (expected "
                       "<arch>_vanilla/ckpt_epoch_240.pth or <dataset>_<arch>.pth)")
    try:
        classes = num_classes or num_classes_in(arch, extract_state_dict(load_checkpoint(path)))
        load_weights(get_model(arch, num_classes=classes), path)
    except CheckpointMismatchError as err:
        return False, f"FAIL {path} -> {arch} ({classes} classes): {err}"
    except (ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        return False, f"FAIL {path} -> {arch}: unreadable checkpoint ({type(err).__name__}: {err})"
    return True, f"OK   {path} -> {arch} ({classes} classes)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.check_teachers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="checkpoint files or folders (e.g. save/models)")
    parser.add_argument("--num_classes", "--num-classes", type=int, default=None,
                        help="classes of every checkpoint (default: read from each classifier)")
    args = parser.parse_args(argv)
    files = [f for p in args.paths for f in find_checkpoints(p)]
    if not files:
        print(f"no checkpoint ({', '.join(CHECKPOINT_EXTS)}) found under {', '.join(args.paths)}")
        return 2
    ok = 0
    for path in files:
        good, line = check_checkpoint(path, args.num_classes)
        ok += good
        print(line, flush=True)
    print(f"{ok} of {len(files)} teacher checkpoints load into their registry architecture")
    return 0 if ok == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Checks that run before a job writes or trains anything.

Every entry script (teacher training, KD, data-free KD) validates its whole command line first:
names, numbers, files, the device, the dataset, the output folder and a resume checkpoint. A
failure is a :class:`UsageError` (or another expected error type), which ``run_main`` prints as
one ``error:`` line with exit code 2, and nothing has been created by then.
"""
from __future__ import annotations

import math
import os
import shutil
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn


class UsageError(ValueError):
    """Bad input found before anything was written or trained."""


def flag_value(v) -> str:
    """A flag's value as the user would type it: ``0.5`` not ``0.50``, ``0`` not ``0.0``, a list
    as its space-separated items."""
    if isinstance(v, (list, tuple)):
        return " ".join(flag_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def require_positive(**values) -> None:
    """Each given value (``None`` skipped) must be a finite number > 0; the keyword is the flag."""
    for flag, v in values.items():
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise UsageError(f"--{flag} {flag_value(v)}: must be a positive number")


def require_nonnegative(**values) -> None:
    for flag, v in values.items():
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise UsageError(f"--{flag} {flag_value(v)}: must be zero or a positive number")


def check_device(name: Optional[str]) -> torch.device:
    """``--device`` resolved; a device this machine lacks is a :class:`UsageError`."""
    from engine.utils import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as e:
        raise UsageError(str(e)) from None


def check_file(flag: str, path: Optional[str], what: str = "file") -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise UsageError(f"--{flag} {path}: no such {what}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UsageError(f"--{flag} {path}: the file is empty")


# Files a run writes into its --save_dir (also what --overwrite removes; nothing else is touched).
RUN_FILES = ("log.txt", "metrics.json", "last.pt", "last.prev.pt", "best.pt", "results.md", "results.json", "student.pt")
RUN_PREFIXES = ("events.out.tfevents.", ".tmp-")
RUN_SUFFIXES = (".png",)
RUN_FOLDERS = ("pool", "pool_spill", "init", "stages")


def _run_entries(save_dir: str, depth: int = 3) -> list:
    """The engine's own entries in ``save_dir``: its file names, and a subfolder (a stage, a
    method of a multi-method run, a run-level mode's cell) that itself holds such entries."""
    if not os.path.isdir(save_dir):
        return []
    found = []
    for name in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, name)
        if (name in RUN_FILES or name.startswith(RUN_PREFIXES) or (os.path.isfile(path) and name.endswith(RUN_SUFFIXES))
                or (name in RUN_FOLDERS and os.path.isdir(path))):
            found.append(name)
        elif depth > 0 and os.path.isdir(path) and not os.path.islink(path) and _run_entries(path, depth - 1):
            found.append(name + "/")
    return found


def check_output_dir(save_dir: str, resume: Optional[str], overwrite: bool) -> None:
    """An existing ``--save_dir`` that holds another run is refused unless the user resumes it
    (``--resume``) or replaces it (``--overwrite``): a silent reuse would mix two runs'
    checkpoints, ``metrics.json`` and TensorBoard curves."""
    if resume:
        return
    found = _run_entries(save_dir)
    if overwrite:
        if found and all(name.endswith("/") for name in found):
            raise UsageError(f"--overwrite: {save_dir} holds runs in subfolders ({', '.join(found[:4])}"
                             f"{', ...' if len(found) > 4 else ''}) but is not a run folder itself; --overwrite "
                             "replaces one run, so pass that run's folder, or choose another --save_dir")
        return
    if found:
        raise UsageError(f"--save_dir {save_dir} already holds a run ({', '.join(found[:4])}"
                         f"{', ...' if len(found) > 4 else ''}): pass --resume to continue it, --overwrite to "
                         "replace it, or choose another --save_dir")


def clear_run_outputs(save_dir: str) -> list:
    """``--overwrite``: remove what an earlier run wrote into ``save_dir`` and its run subfolders
    (only the engine's own file names; anything else stays, and a subfolder is removed only once
    it is empty). Returns the names removed at the top level."""
    removed = _run_entries(save_dir)
    for name in removed:
        path = os.path.join(save_dir, name.rstrip("/"))
        if name.endswith("/"):
            clear_run_outputs(path)
            if not os.listdir(path):
                os.rmdir(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return removed


def check_resume(path: str, job: str, expected: Mapping[str, object], current: Mapping[str, object],
                 fixed: Iterable[str], replannable: Iterable[str] = (), same_processes: str = "") -> Dict[str, tuple]:
    """Compare a resume checkpoint with this command line before anything is built.

    ``expected``: values that must match (method, models, dataset) or the checkpoint is another
    run's. ``fixed``: flags whose change the resumed state cannot honour (a refused change is a
    :class:`UsageError` naming each flag and both values). ``replannable``: flags a resume may
    change (the caller re-plans and logs it). Returns ``{flag: (checkpoint value, new value)}``
    for the replannable flags that changed. ``same_processes`` (what each rank kept, e.g. "its own
    pool shard"): the run must resume with as many processes as wrote the checkpoint."""
    from engine.checkpoint import load_resume

    ckpt, _ = load_resume(path)  # a corrupt last.pt falls back on the previous one, as the resume will
    if not isinstance(ckpt, Mapping) or "args" not in ckpt or "epoch" not in ckpt:
        raise UsageError(f"--resume {path}: not a checkpoint of this engine's trainer (no args/epoch); "
                         "pass weights with --teacher_ckpt / --s_init instead")
    saved = ckpt["args"] or {}
    saved_job = saved.get("job")
    if saved_job is not None and saved_job != job:
        raise UsageError(f"--resume {path}: a checkpoint of a {saved_job} run, not of this {job} run")
    for k, want in expected.items():
        got = saved.get(k)
        if got is not None and got != want:
            raise UsageError(f"--resume {path}: the checkpoint is of --{k} {flag_value(got)}, this command line "
                             f"asks for --{k} {flag_value(want)}")
    done = int(ckpt["epoch"]) + 1
    if isinstance(current.get("epochs"), int) and current["epochs"] < done:
        raise UsageError(f"--resume {path}: the checkpoint has trained {done} epochs already, more than --epochs "
                         f"{current['epochs']}")
    if same_processes:
        from engine import distributed

        ranks = ckpt.get("rng_ranks")  # one RNG state per rank under torchrun, else None
        was, now = (len(ranks) if ranks else 1), distributed.current().world_size
        if was != now:
            how = "one process, no torchrun" if was == 1 else f"torchrun --nproc_per_node {was}"
            raise UsageError(f"--resume {path}: the run was trained by {was} process(es) and each kept "
                             f"{same_processes}; resume it with {was} ({how}), not {now}")
    changed = [(k, saved.get(k), current.get(k)) for k in fixed
               if k in saved and k in current and saved.get(k) != current.get(k)]
    if changed:
        diffs = ", ".join(f"--{k} {flag_value(new)} (checkpoint: {flag_value(old)})" for k, old, new in changed)
        raise UsageError(f"--resume {path}: changed flags this resume cannot apply: {diffs}; "
                         "drop them, or start a new run with another --save_dir")
    return {k: (saved.get(k), current.get(k)) for k in replannable
            if k in saved and k in current and saved.get(k) != current.get(k)}


def probe_models(models: Mapping[str, nn.Module], num_classes: int, in_chans: int, image_size: int) -> None:
    """One forward of a 2-image batch through each model (eval mode, no grad, on the model's
    device): a model that does not take ``in_chans`` x ``image_size`` images, or does
    not give ``num_classes`` logits, is a :class:`UsageError` naming it."""
    for role, model in models.items():
        param = next(iter(model.parameters()), None)
        x = torch.zeros(2, in_chans, image_size, image_size, device=param.device if param is not None else "cpu")
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0][:200]
            raise UsageError(f"{role} {getattr(model, 'model_name', type(model).__name__)} does not take "
                             f"{in_chans}x{image_size}x{image_size} images ({msg})") from None
        finally:
            model.train(was)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise UsageError(f"{role} {getattr(model, 'model_name', type(model).__name__)} gives outputs of shape "
                             f"{shape} for a batch of 2; the dataset has {num_classes} classes")


def require_one_of(flag: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {flag} {value!r}. Valid: {', '.join(sorted(valid))}")

"""Checkpoints: atomic writes, and forgiving-but-strict weight loading.

``save_checkpoint`` writes to a temporary file in the same folder and renames it over the
target, so a crash mid-write never leaves a truncated ``last.pt``; the file gets the user's
umask like any other file. ``load_weights`` reads with ``torch.load(weights_only=True)``, so no
pickled code ever runs, and accepts the layouts found in the wild:

* a bare state dict, or one under ``state_dict``, ``model``, ``model_state_dict`` or ``net``
  beside any metadata (RepDistiller's ``{'model', 'accuracy': 0-d tensor, 'epoch'}`` and its
  ``*_last.pth`` with ``'opt': argparse.Namespace``; mdistiller's ``{'model', 'best_acc'}``;
  Fast-Datafree's ``{'state_dict', 'best_acc1', 'arch'}``; torchdistill's ``{'model', 'args':
  Namespace, ...}``; Lightning's ``{'state_dict', 'hyper_parameters': AttributeDict, ...}``);
* keys behind DataParallel / DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``, or the
  attribute a wrapper holds the network in (Lightning's ``model.``, mdistiller's ``student.``),
  the wrapper's other modules (a Lightning module's ``teacher.*``) left out.

Metadata of a few harmless types is allowed (:data:`HARMLESS_GLOBALS`: ``argparse.Namespace``,
numpy scalars and arrays, Lightning's ``AttributeDict`` read as a plain dict). Anything else
pickled is refused with :class:`CheckpointError`, as is an empty, truncated or non-checkpoint
file. If the weights do not fit the architecture, :class:`CheckpointMismatchError` names every
missing key, unexpected key and shape mismatch.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

import torch
import torch.nn as nn

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")
# prefixes every key gets from a wrapper that is never part of the network itself
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# attributes a training wrapper holds the network in (Lightning: model., mdistiller: student.)
HOLDER_PREFIXES = ("model.", "student.", "net.", "module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint: empty, truncated, not PyTorch, or holding
    pickled objects that ``weights_only`` loading refuses."""


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    found = [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    found += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    names = [(f, f"numpy.core.multiarray.{f.__name__}") for f in found[2:4]]  # numpy < 2 spelling
    return found + names


HARMLESS_GLOBALS = [argparse.Namespace, *_numpy_globals(),
                    # Lightning's AttributeDict (a dict with attribute access), read back as a plain dict
                    (dict, "lightning.fabric.utilities.data.AttributeDict"),
                    (dict, "pytorch_lightning.utilities.parsing.AttributeDict")]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model's parameters and buffers."""

    def __init__(self, missing: List[str], unexpected: List[str], shapes: Dict[str, tuple], source: str = ""):
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes
        parts = []  # one line, as every expected error is: what differs, separated by '; '
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for k, (want, got) in shapes.items():
            parts.append(f"shape mismatch {k}: model {tuple(want)} vs checkpoint {tuple(got)}")
        head = f"checkpoint {source} does not fit the architecture: ".replace("  ", " ")
        super().__init__(head + "; ".join(parts))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def previous_path(path: str) -> str:
    """Where :func:`save_checkpoint` keeps the checkpoint a save replaced (``last.pt`` ->
    ``last.prev.pt``)."""
    root, ext = os.path.splitext(path)
    return f"{root}.prev{ext or '.pt'}"


TMP_PREFIX = ".tmp-"


def save_checkpoint(obj: dict, path: str, keep_previous: bool = False) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file in the same folder, fsync, rename),
    with the permissions the user's umask gives new files (``mkstemp`` alone would make it 0600).

    A failed write (a full disk, a kill) leaves ``path`` as it was, and the temporary file is
    removed (or, after a kill, by :func:`remove_orphans` on the next start). ``keep_previous``:
    the file being replaced becomes :func:`previous_path` (hard-linked first, so ``path`` itself
    never goes missing), which :func:`load_resume` falls back on."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.isfile(path):
            prev_tmp = tmp + ".prev"
            try:
                os.link(path, prev_tmp)
            except OSError:  # a file system without hard links
                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + ".prev"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise


def remove_orphans(folder: str) -> List[str]:
    """Remove the temporary files a killed save left under ``folder`` (recursively); returns
    their paths relative to ``folder``."""
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(root, name))
                removed.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(removed)


def load_resume(path: str, map_location: Union[str, torch.device] = "cpu",
                log: Optional[Callable[[str], None]] = None) -> Tuple[dict, str]:
    """Load a resume checkpoint; when ``path`` is truncated or corrupt, fall back on the previous
    one (:func:`previous_path`) and say so through ``log``. Returns the checkpoint and the path
    it came from."""
    try:
        return load_checkpoint(path, map_location), path
    except CheckpointError as e:
        prev = previous_path(path)
        if not os.path.isfile(prev):
            raise CheckpointError(f"{e}; there is no previous checkpoint ({prev}) to fall back on") from None
        try:
            ckpt = load_checkpoint(prev, map_location)
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; the previous checkpoint is unreadable too ({e2})") from None
        if log is not None:
            log(f"warning: {e}; resuming from the previous checkpoint {prev} (epoch {ckpt.get('epoch', -1) + 1})")
        return ckpt, prev


def load_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors, plain containers and
    :data:`HARMLESS_GLOBALS`); every way a file can fail to be one is a :class:`CheckpointError`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    try:
        with torch.serialization.safe_globals(HARMLESS_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                      if not _is_harmless(g)]
        except Exception:  # not a zip checkpoint: the unpickler's own message says what it saw
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path}: refused to unpickle {', '.join(unsafe)} (loading never runs pickled code; "
                f"save the weights alone, torch.save(model.state_dict(), PATH), and load that)") from None
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint, or truncated") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        detail = "" if isinstance(e, KeyError) else f" ({_first_line(e)})"  # KeyError: a stray pickle opcode
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint, or truncated{detail}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    first = text[0].split(". ")[0]  # the first sentence: torch's messages go on with advice
    return first[:160]


def _is_harmless(name: str) -> bool:
    for g in HARMLESS_GLOBALS:
        full = g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
        if full == name:
            return True
    return False


def _holds_tensors(m) -> bool:
    """A mapping with a tensor somewhere inside (at most two levels down)."""
    if not isinstance(m, Mapping):
        return False
    return any(isinstance(v, torch.Tensor) or (isinstance(v, Mapping) and
               any(isinstance(w, (torch.Tensor, Mapping)) for w in v.values())) for v in m.values())


def extract_state_dict(ckpt: Mapping) -> Dict[str, torch.Tensor]:
    """Find the state dict inside any of the accepted layouts; strip ``module.`` / ``_orig_mod.``.

    A state-dict key (``state_dict``, ``model``, ...) holding tensors wins over tensors beside it,
    so metadata such as RepDistiller's 0-d ``accuracy`` tensor is never taken for the weights."""
    sd = ckpt
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}} nests at most once in practice
        if not isinstance(sd, Mapping):
            break
        key = next((k for k in STATE_DICT_KEYS if k in sd and _holds_tensors(sd[k])), None)
        if key is None:
            break
        sd = sd[key]
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        found = list(ckpt.keys())[:20] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"no state dict found: expected tensors at the top level or under one of "
            f"{', '.join(STATE_DICT_KEYS)}; found {found}")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    stripped = True
    while sd and stripped:  # DataParallel around a compiled model: module._orig_mod.conv1.weight
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd, stripped = {k[len(prefix):]: v for k, v in sd.items()}, True
    return sd


def _fits(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> bool:
    return (all(k in sd or k.endswith("num_batches_tracked") for k in own)
            and all(k in own and own[k].shape == v.shape for k, v in sd.items()))


def select_for(model: nn.Module, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``sd`` itself if it fits ``model``; else the part of it under a holder attribute
    (``model.``, ``student.``, ...) that fits, prefix removed; else ``sd`` unchanged (and
    :func:`check_fit` reports the difference)."""
    own = model.state_dict()
    if _fits(own, sd):
        return sd
    frontier = [sd]
    for _ in range(3):  # e.g. Lightning around DataParallel: model.module.conv1.weight
        nxt = []
        for cand in frontier:
            for prefix in HOLDER_PREFIXES:
                part = {k[len(prefix):]: v for k, v in cand.items() if k.startswith(prefix)}
                if part and _fits(own, part):
                    return part
                if part:
                    nxt.append(part)
        frontier = nxt
    return sd


def check_fit(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` fits ``model`` exactly."""
    own = model.state_dict()
    # BatchNorm's num_batches_tracked counters are absent from checkpoints saved by torch < 0.4.1
    # (e.g. akamaster's); loading then keeps the model's own counters
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = {k: (own[k].shape, v.shape) for k, v in state_dict.items() if k in own and own[k].shape != v.shape}
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(missing, unexpected, shapes, source)


def load_weights(model: nn.Module, source: Union[str, Mapping], map_location="cpu") -> nn.Module:
    """Load teacher/student weights from a path or an in-memory checkpoint, strictly."""
    name = source if isinstance(source, str) else "<in-memory>"
    ckpt = load_checkpoint(source, map_location) if isinstance(source, str) else source
    sd = select_for(model, extract_state_dict(ckpt))
    check_fit(model, sd, name)
    model.load_state_dict(sd, strict=False)  # check_fit was strict; only absent BN counters are tolerated
    return model


def export_weights(model: nn.Module, path: str) -> str:
    """``--export``: the model's weights alone, as a plain state dict on the CPU, written
    atomically (by rank 0 alone under torchrun); ``torch.load(path)`` gives a dict that
    ``model.load_state_dict`` takes."""
    from engine.distributed import barrier, is_main

    if is_main():
        save_checkpoint({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    barrier()
    return path


def find_resume_path(resume: Optional[str], save_dir: str) -> Optional[str]:
    """``--resume`` with no path (or 'auto') means ``<save_dir>/last.pt``."""
    if not resume:
        return None
    path = os.path.join(save_dir, "last.pt") if resume in ("auto", "last", True) else resume
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
    return path

"""Checkpoints: atomic writes, and forgiving-but-strict weight loading.

``save_checkpoint`` writes to a temporary file in the same folder and renames it over the
target, so a crash mid-write never leaves a truncated ``last.pt``. ``load_weights`` reads
with ``torch.load(weights_only=True)`` (no pickled code runs) and accepts the layouts found
in the wild: a bare state dict, or one under ``state_dict``, ``model``, ``model_state_dict``
or ``net``, with or without DataParallel's ``module.`` prefix. If the weights do not fit
the architecture, :class:`CheckpointMismatchError` names every missing key, unexpected key
and shape mismatch.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model's parameters and buffers."""

    def __init__(self, missing: List[str], unexpected: List[str], shapes: Dict[str, tuple], source: str = ""):
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes
        lines = [f"checkpoint {source} does not fit the architecture:".replace("  ", " ")]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for k, (want, got) in shapes.items():
            lines.append(f"  shape mismatch {k}: model {tuple(want)} vs checkpoint {tuple(got)}")
        super().__init__("\n".join(lines))


def save_checkpoint(obj: dict, path: str) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Load a checkpoint written by this engine (tensors and plain containers only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


def extract_state_dict(ckpt: Mapping) -> Dict[str, torch.Tensor]:
    """Find the state dict inside any of the accepted layouts and strip ``module.``."""
    sd = ckpt
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}} nests at most once in practice
        if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            key = next((k for k in STATE_DICT_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if key is None:
                break
            sd = sd[key]
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        found = list(ckpt.keys())[:20] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"no state dict found: expected tensors at the top level or under one of "
            f"{', '.join(STATE_DICT_KEYS)}; found {found}")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
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
    sd = extract_state_dict(ckpt)
    check_fit(model, sd, name)
    model.load_state_dict(sd, strict=False)  # check_fit was strict; only absent BN counters are tolerated
    return model


def find_resume_path(resume: Optional[str], save_dir: str) -> Optional[str]:
    """``--resume`` with no path (or 'auto') means ``<save_dir>/last.pt``."""
    if not resume:
        return None
    path = os.path.join(save_dir, "last.pt") if resume in ("auto", "last", True) else resume
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
    return path

"""Device choice, optimiser kernels, seeding and RNG state capture (for exact resume)."""
from __future__ import annotations

import os
import random
import time
from typing import Optional

import numpy as np
import torch


def resolve_device(name: Optional[str] = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    valid = "auto, cpu" + (", cuda" if torch.cuda.is_available() else "") + (
        ", mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RuntimeError(f"--device {name}: not a device name (this machine has: {valid})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine (it has: {valid})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and "mps" not in valid:
        raise RuntimeError(f"--device {name}: MPS is not available on this machine (it has: {valid})")
    return device


OPT_IMPLS = ("auto", "fused", "foreach", "loop")


def optimizer_impl(impl: str, device: torch.device) -> dict:
    """Keyword arguments that pick a ``torch.optim`` kernel: ``fused`` (one kernel updates every
    tensor), ``foreach`` (batched per-op kernels) or ``loop`` (one update per tensor, the
    reference codes' default on CPU). ``auto`` is ``fused`` on CPU and CUDA, where torch has
    fused SGD and Adam, and ``foreach`` elsewhere. ``python -m bench.optimizations`` measures
    the three (e.g. Adam on ResNet-8's 29 tensors: loop 1.5 ms, foreach 1.1 ms, fused 0.4 ms on CPU).
    Results differ from ``loop`` only by floating-point rounding."""
    if impl not in OPT_IMPLS:
        raise ValueError(f"optimizer implementation must be one of {', '.join(OPT_IMPLS)}; got {impl!r}")
    if impl == "auto":
        impl = "fused" if torch.device(device).type in ("cpu", "cuda") else "foreach"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def get_rng_state() -> dict:
    """Every global RNG state, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is half precision (an autocast output); float32/64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class DeviceTimer:
    """Accumulates the device time of many short regions without a host sync per region:
    CUDA events on CUDA (read once, in :meth:`pop`), wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self._pairs, self._seconds = [], 0.0

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, token) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs.append((token, end))
        else:
            self._seconds += time.perf_counter() - token

    def pop(self) -> float:
        """Seconds accumulated since the last call (synchronises CUDA once)."""
        if self._pairs:
            self._pairs[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._pairs) / 1e3
            self._pairs.clear()
        out, self._seconds = self._seconds, 0.0
        return out


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def library_versions() -> dict:
    """Machine and library versions, recorded next to every figure the engine writes."""
    import platform

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "machine": platform.machine(), "platform": platform.platform(),
                "processor": _cpu_model() or platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads()}
    for lib in ("torchvision", "kornia"):
        try:
            versions[lib] = __import__(lib).__version__
        except Exception:  # pragma: no cover - both are hard dependencies
            pass
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
        versions["gpu"] = torch.cuda.get_device_name()
    return versions

"""Forward hooks that read named intermediate tensors out of any ``nn.Module``.

A *tap* names a module and which side of it to read:
``"layer2"`` is the output of ``model.layer2``; ``"layer2.3.act:in"`` is the first positional
input of ``model.layer2[3].act`` (how registered models expose pre-activation features).
Registered models declare their taps in ``model.feature_taps`` (an ordered mapping from a
tap name to such a spec); any other model (torchvision, timm) is tapped by passing the
mapping explicitly, so no model needs editing.

Standard tap names used by the registry: ``stem``, ``stage1`` .. ``stageN`` (stage outputs,
post-activation), ``preact1`` .. ``preactN`` (the same tensors before the final ReLU) and
``pool`` (the flattened penultimate feature that feeds the classifier).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn


def parse_tap(spec: str) -> Tuple[str, str]:
    """Split ``"module.path[:in|:out]"`` into ``(module_path, side)``."""
    path, _, side = spec.partition(":")
    side = side or "out"
    if side not in ("in", "out"):
        raise ValueError(f"tap {spec!r}: side must be ':in' or ':out'")
    return path, side


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule`` with an error that lists the model's module names."""
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise KeyError(
            f"{type(model).__name__} has no module {path!r}; its modules are: "
            + ", ".join(names[:200]) + (" ..." if len(names) > 200 else "")
        ) from None


class FeatureTaps:
    """Attach forward hooks on named modules and collect what passes through them.

    >>> taps = FeatureTaps(model)              # the model's declared taps
    >>> logits = model(x); taps["stage3"]      # tensors of the last forward
    >>> taps.remove()

    Use as a context manager to remove the hooks on exit. Tensors are stored as produced
    (with their autograd graph), so losses on them back-propagate into the model.
    """

    def __init__(self, model: nn.Module, taps: Optional[Mapping[str, str]] = None):
        if taps is None:
            taps = getattr(model, "feature_taps", None)
            if taps is None:
                raise ValueError(
                    f"{type(model).__name__} declares no feature_taps; pass a mapping "
                    "{tap_name: 'module.path[:in]'}"
                )
        self.specs: Dict[str, str] = dict(taps)
        self.features: Dict[str, torch.Tensor] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        for name, spec in self.specs.items():
            path, side = parse_tap(spec)
            module = resolve_module(model, path)
            self._handles.append(module.register_forward_hook(self._make_hook(name, side)))

    def _make_hook(self, name: str, side: str):
        def hook(_module, inputs, output):
            self.features[name] = inputs[0] if side == "in" else output

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.features[name]

    def __iter__(self):
        return iter(self.specs)

    def values(self) -> List[torch.Tensor]:
        return [self.features[n] for n in self.specs]

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

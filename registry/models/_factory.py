"""Model registry: ``@register_model`` decorators and the ``get_model`` factory.

Every architecture is registered under one canonical name plus any aliases used in the
field (Fast-Datafree spells ``wrn40_2``, RepDistiller ``wrn_40_2``), so scripts from either
code base run unchanged.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, List, Optional

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_CANONICAL: Dict[str, str] = {}  # any accepted name -> canonical name


def register_model(name: str, *aliases: str) -> Callable:
    """Register a factory ``fn(num_classes, in_chans, **kw) -> nn.Module`` under ``name``
    and every alias. Duplicate names are a programming error."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for n in (name,) + aliases:
            if n in _CANONICAL:
                raise ValueError(f"model name {n!r} registered twice")
            _CANONICAL[n] = name
        _MODELS[name] = fn
        return fn

    return deco


def list_models(include_aliases: bool = False) -> List[str]:
    """Canonical model names (and aliases when asked), sorted."""
    return sorted(_CANONICAL if include_aliases else _MODELS)


def canonical_name(name: str) -> str:
    """The canonical spelling of ``name``; raises ``KeyError`` listing the valid names."""
    if name not in _CANONICAL:
        close = difflib.get_close_matches(name, list(_CANONICAL), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models(True))}"
        )
    return _CANONICAL[name]


def get_model(name: str, num_classes: int = 10, in_chans: Optional[int] = None,
              **kwargs) -> nn.Module:
    """Build a registered model. ``in_chans=None`` keeps the architecture's default (3, or 1
    for LeNet). Every model carries ``feature_taps`` (see :mod:`engine.hooks`) naming the
    modules whose inputs/outputs distillers may read."""
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = _MODELS[canonical_name(name)](num_classes=num_classes, **kwargs)
    model.model_name = canonical_name(name)
    return model

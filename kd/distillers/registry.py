"""The distiller registry: ``@register_distiller("attention", "at")`` on a class makes it
available by its name and aliases to ``kd/train.py`` (and :func:`get_distiller_class`)."""
from __future__ import annotations

import difflib
from typing import Dict, List, Type

_DISTILLERS: Dict[str, type] = {}
_CANONICAL: Dict[str, str] = {}


def register_distiller(name: str, *aliases: str):
    """Class decorator: register a :class:`kd.distillers.base.Distiller` under ``name``
    (its canonical name, also set as ``cls.name``) and every alias."""

    def deco(cls: type) -> type:
        for n in (name,) + aliases:
            if n in _CANONICAL:
                raise ValueError(f"distiller name {n!r} registered twice")
            _CANONICAL[n] = name
        cls.name = name
        cls.aliases = tuple(aliases)
        _DISTILLERS[name] = cls
        return cls

    return deco


def list_distillers(include_aliases: bool = False) -> List[str]:
    return sorted(_CANONICAL if include_aliases else _DISTILLERS)


def canonical_distiller(name: str) -> str:
    key = name if name in _CANONICAL else name.lower()
    if key not in _CANONICAL:
        close = difflib.get_close_matches(name.lower(), list(_CANONICAL), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown distillation method {name!r}.{hint} Valid methods: "
                       + ", ".join(list_distillers(True)))
    return _CANONICAL[key]


def get_distiller_class(name: str) -> Type:
    """The class registered under ``name`` (case-insensitive; aliases accepted)."""
    return _DISTILLERS[canonical_distiller(name)]

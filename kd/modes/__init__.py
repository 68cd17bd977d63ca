"""Run-level modes: jobs made of several distillation runs (one file each, registered with
``@register_mode``). A mode adds its own flags, checks its inputs before anything is written,
runs its stages through the shared trainer and returns result rows for the run's table.

``takd`` (teacher -> assistant -> student), ``allkd`` (a sweep of teachers), ``multikd`` (N
students from one teacher and their ensemble), ``kdparam`` (the T x alpha grid).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
from typing import Dict, List, Sequence

_MODES: Dict[str, "Mode"] = {}


class Mode:
    """Base class of a run-level mode."""

    name = ""
    flags: Sequence[str] = ()  # argparse dests this mode reads (others warn when given)

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Add this mode's flags (defaults None, so that 'given' can be told apart)."""

    def validate(self, ctx) -> None:
        """Check names and files before anything is written (raise ValueError/KeyError)."""

    def unused_flags(self, args) -> List[str]:
        """Given flags this mode does not read (named in a warning)."""
        return []

    def run(self, ctx, save_dir: str) -> List[dict]:
        raise NotImplementedError


def register_mode(name: str):
    def deco(cls):
        if name in _MODES:
            raise ValueError(f"mode {name!r} registered twice")
        cls.name = name
        _MODES[name] = cls()
        return cls

    return deco


def list_modes() -> List[str]:
    return sorted(_MODES)


def canonical_mode(name: str) -> str:
    if name.lower() not in _MODES:
        close = difflib.get_close_matches(name.lower(), list(_MODES), n=3)
        raise KeyError(f"unknown mode {name!r}." + (f" Did you mean {', '.join(close)}?" if close else "")
                       + f" Valid modes: {', '.join(list_modes())}")
    return name.lower()


def get_mode(name: str) -> Mode:
    return _MODES[canonical_mode(name)]


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Mode", "register_mode", "list_modes", "canonical_mode", "get_mode"]

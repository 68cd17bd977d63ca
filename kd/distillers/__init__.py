"""Distillers: one file per method, each registered by name with ``@register_distiller``.

Importing this package imports every module in it, so a new method is one new file; its
decorator line is its registry entry. ``get_distiller_class("at")`` returns the class;
``list_distillers(True)`` lists every accepted name.
"""
import importlib
import pkgutil

from kd.distillers.base import DataInfo, Distiller, InitStage, Outputs, StageObjective, Weights, hard_labels, option
from kd.distillers.registry import canonical_distiller, get_distiller_class, list_distillers, register_distiller

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in ("base", "registry") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

from kd.distillers.kd import KD, NoKD  # noqa: E402

__all__ = ["DataInfo", "Distiller", "InitStage", "Outputs", "StageObjective", "Weights", "KD", "NoKD", "hard_labels",
           "option", "canonical_distiller", "get_distiller_class", "list_distillers", "register_distiller"]

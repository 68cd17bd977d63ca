"""Published recipes as files: ``recipes/<name>.yaml``, flags as keys.

A method's defaults are its published CIFAR recipe, ``recipes/<method>_cifar.yaml`` (each file
says which command line of which reference it holds); ``--config FILE`` reads any such file,
and the command line overrides it (:func:`engine.launch.load_config`).
"""
from __future__ import annotations

import os
from typing import List, Optional

RECIPE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def list_recipes() -> List[str]:
    if not os.path.isdir(RECIPE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(RECIPE_DIR) if f.endswith(".yaml"))


def recipe_path(name: str) -> str:
    """``name`` (a file, or a recipe name such as ``fast_meta_cifar``) as a path."""
    if os.path.isfile(name):
        return name
    path = os.path.join(RECIPE_DIR, name if name.endswith(".yaml") else f"{name}.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no recipe {name!r}. Recipes: {', '.join(list_recipes())}")
    return path


def method_recipe(method: str) -> Optional[str]:
    """The file of ``method``'s published CIFAR recipe, or ``None`` when it has none."""
    path = os.path.join(RECIPE_DIR, f"{method}_cifar.yaml")
    return path if os.path.isfile(path) else None

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


def read_recipe(path: str) -> dict:
    """The ``flag: value`` mapping of a recipe file (a path, or a recipe name such as
    ``fast_meta_cifar``). Invalid YAML or anything but a mapping is a one-line ``ValueError``
    naming the file; an unknown name, a ``FileNotFoundError`` listing the recipes."""
    import yaml

    path = recipe_path(path)  # a file as it is; a name under recipes/ (unknown: the list of recipes)
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected flag: value lines, got a {type(data).__name__}")
    return data


def method_recipe(method: str) -> Optional[str]:
    """The file of ``method``'s published CIFAR recipe, or ``None`` when it has none."""
    path = os.path.join(RECIPE_DIR, f"{method}_cifar.yaml")
    return path if os.path.isfile(path) else None

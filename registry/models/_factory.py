"""Model registry: ``@register_model`` decorators and the ``get_model`` factory.

Every architecture is registered under one canonical name plus any aliases used in the
field (Fast-Datafree spells ``wrn40_2``, RepDistiller ``wrn_40_2``), so scripts from either
code base run unchanged.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_CANONICAL: Dict[str, str] = {}  # any accepted name -> canonical name
Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]  # (mean, std)
# input normalisation a model family's published checkpoints were trained with, when it is not
# the dataset's usual one: (mean, std), or {dataset: (mean, std)}
_NORMALIZATION: Dict[str, Union[Stats, Dict[str, Stats]]] = {}


def register_model(name: str, *aliases: str, normalization: Optional[Union[Stats, Dict[str, Stats]]] = None) -> Callable:
    """Register a factory ``fn(num_classes, in_chans, **kw) -> nn.Module`` under ``name``
    and every alias. ``normalization``: the (mean, std) the family's published checkpoints
    expect (or one per dataset), which :func:`model_normalization` hands to the jobs.
    Duplicate names are a programming error."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for n in (name,) + aliases:
            if n in _CANONICAL:
                raise ValueError(f"model name {n!r} registered twice")
            _CANONICAL[n] = name
        _MODELS[name] = fn
        if normalization is not None:
            _NORMALIZATION[name] = normalization
        return fn

    return deco


def model_normalization(name: str, dataset: Optional[str] = None) -> Optional[Stats]:
    """The (mean, std) that ``name``'s published checkpoints were trained with on ``dataset``,
    or ``None`` when they use the dataset's own statistics (most families) or it is unknown."""
    if is_external(name):
        return None
    norm = _NORMALIZATION.get(canonical_name(name))
    if isinstance(norm, dict):
        norm = norm.get(dataset)
    return (tuple(norm[0]), tuple(norm[1])) if norm is not None else None


def list_models(include_aliases: bool = False) -> List[str]:
    """Canonical model names (and aliases when asked), sorted."""
    return sorted(_CANONICAL if include_aliases else _MODELS)


EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def is_external(name: str) -> bool:
    """``torchvision:NAME``, ``timm:NAME`` or ``path/to/file.py:factory``: built outside the registry."""
    return name.startswith(EXTERNAL_PREFIXES) or (":" in name and name.split(":", 1)[0].endswith(".py"))


def _external(name: str, num_classes: int, in_chans: Optional[int], **kwargs) -> nn.Module:
    """Build a model the registry does not hold (see :func:`is_external`)."""
    kind, _, target = name.partition(":")
    if kind == "torchvision":
        import torchvision

        classifiers = torchvision.models.list_models(module=torchvision.models)
        if target not in classifiers:
            close = difflib.get_close_matches(target, classifiers, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown torchvision model {target!r}.{hint} Valid names: {', '.join(classifiers)}")
        if in_chans not in (None, 3):
            raise ValueError(f"{name}: torchvision classifiers take 3-channel images, the dataset has {in_chans}")
        return torchvision.models.get_model(target, num_classes=num_classes, **kwargs)
    if kind == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError(f"{name}: timm is not installed (pip install timm, or pip install -e '.[timm]')") from None
        if target not in timm.list_models():
            close = difflib.get_close_matches(target, timm.list_models(), n=3)
            raise KeyError(f"unknown timm model {target!r}." + (f" Did you mean {', '.join(close)}?" if close else ""))
        return timm.create_model(target, num_classes=num_classes, in_chans=in_chans or 3, **kwargs)
    import importlib.util
    import inspect
    import os

    path = kind
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no file {path}")
    spec = importlib.util.spec_from_file_location(f"_user_model_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, target, None)
    if not callable(factory):
        found = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
        raise KeyError(f"{path} has no callable {target!r}. It defines: {', '.join(found)}")
    accepted = inspect.signature(factory).parameters
    call = {"num_classes": num_classes, **kwargs}
    if in_chans is not None and ("in_chans" in accepted or any(p.kind == p.VAR_KEYWORD for p in accepted.values())):
        call["in_chans"] = in_chans
    model = factory(**call)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}: {target}() returned a {type(model).__name__}, not an nn.Module")
    return model


def canonical_name(name: str) -> str:
    """The canonical spelling of ``name``; raises ``KeyError`` listing the valid names.
    External models (:func:`is_external`) keep their spelling."""
    if is_external(name):
        return name
    if name not in _CANONICAL:
        close = difflib.get_close_matches(name, list(_CANONICAL), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models(True))}"
        )
    return _CANONICAL[name]


def get_model(name: str, num_classes: int = 10, in_chans: Optional[int] = None,
              **kwargs) -> nn.Module:
    """Build a registered model, or an external one: ``torchvision:resnet18`` (torchvision's
    classifier with ``num_classes`` outputs, no pretrained weights: load them with the checkpoint
    flags), ``timm:NAME`` (timm, an optional extra) or ``path/to/file.py:factory`` (called with
    ``num_classes`` and, when it takes it, ``in_chans``). ``in_chans=None`` keeps the architecture's default (3, or 1
    for LeNet). Every model carries ``feature_taps`` (see :mod:`engine.hooks`) naming the
    modules whose inputs/outputs distillers may read."""
    if is_external(name):
        model = _external(name, num_classes, in_chans, **kwargs)
        model.model_name = name
        return model
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = _MODELS[canonical_name(name)](num_classes=num_classes, **kwargs)
    model.model_name = canonical_name(name)
    return model

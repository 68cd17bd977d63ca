"""Builders of expected state-dict tables (parameter / buffer name -> shape) for the tests that
check a registry model's keys against a reference definition."""
from typing import Dict, Tuple

Table = Dict[str, Tuple[int, ...]]  # name -> shape, in definition order


def _bn(t: Table, prefix: str, c: int) -> None:
    for k in ("weight", "bias", "running_mean", "running_var"):
        t[f"{prefix}.{k}"] = (c,)
    t[f"{prefix}.num_batches_tracked"] = ()


def _conv(t: Table, name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
    t[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
        t[f"{name}.bias"] = (cout,)


def _linear(t: Table, name: str, cout: int, cin: int) -> None:
    t[f"{name}.weight"], t[f"{name}.bias"] = (cout, cin), (cout,)

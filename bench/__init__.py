"""Benchmarks: each prints its figures and can save them with :func:`save_json`."""
import json
import os


def save_json(path: str, payload: dict) -> None:
    """Write a benchmark's figures (with its args, versions and device) to ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)

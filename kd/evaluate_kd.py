"""Distiller's (karanchahal/distiller) script name: ``python kd/evaluate_kd.py --teacher resnet20
--student resnet8 --dataset cifar10 --teacher-checkpoint T.pth --mode nokd kd takd`` runs
:mod:`kd.train` with Distiller's recipe, every mode in one go, and one results table."""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.launch import run_main  # noqa: E402
from kd import train as kdtrain  # noqa: E402


def main(argv=None) -> int:
    return run_main(lambda a: kdtrain.run(a, prog="evaluate_kd.py", recipe="distiller"), argv)


if __name__ == "__main__":
    sys.exit(main())

"""RepDistiller's script name: ``python kd/train_student.py --path_t ... --distill crd --model_s resnet8x4
-a 0 -b 0.8 --trial 1`` runs :mod:`kd.train` with the CRD recipe (RepDistiller's defaults)."""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.launch import run_main  # noqa: E402
from kd import train as kdtrain  # noqa: E402


def main(argv=None) -> int:
    return run_main(lambda a: kdtrain.run(a, prog="train_student.py", recipe="crd"), argv)


if __name__ == "__main__":
    sys.exit(main())

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ../shared/data beside the checkout holds MNIST (read-only).
SHARED_DATA = os.environ.get("FASTDFKD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def has_mnist() -> bool:
    return os.path.exists(os.path.join(SHARED_DATA, "MNIST", "raw", "train-images-idx3-ubyte.gz"))


@pytest.fixture
def shared_data():
    if not has_mnist():
        pytest.skip("../shared/data/MNIST is not present")
    return SHARED_DATA

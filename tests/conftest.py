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


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny tensors, where threads only add overhead (far more
    on a busy shared CPU); the previous setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

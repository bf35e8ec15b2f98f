import os.path as osp
import sys

import pytest
import torch

# The tests' own reference implementation lives next to them.
sys.path.insert(0, osp.dirname(__file__))

# The tests compare float32 paths to float32 rounding; on a GPU, TF32
# convolutions and matrix products (cuDNN's default) would round each
# product to 10 mantissa bits and hide or fake differences of that size.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Numerical gradient checks run thousands of tiny ops: threads only
    add synchronisation, and on a busy machine a lot of it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a, b):
    """max |a - b| / max |b|, computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

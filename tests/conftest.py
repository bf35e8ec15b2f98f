import os.path as osp
import sys

import pytest
import torch

# The tests' own reference implementation lives next to them.
sys.path.insert(0, osp.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def rel_err(a, b):
    """max |a - b| / max |b|, computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

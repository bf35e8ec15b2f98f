"""The devices the op tests run on. The CUDA cases are collected on every
machine and reported as skipped where there is no GPU, so that a test log
says which ran (.ci/run counts the skipped ones)."""
import pytest
import torch

NO_CUDA = 'no CUDA device'
CUDA = pytest.param('cuda',
                    marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                             reason=NO_CUDA),
                    id='cuda')
DEVICES = ['cpu', CUDA]

"""The private torch internals the ops rely on, in one place.

Each is checked against the running torch when first used: where one is
missing, a function that needs it raises an error naming the torch
version (:class:`TorchInternalsError`), and one that has a public
equivalent computing the same bits falls back to it.
tests/test_torch_internals.py checks that each behaves as the ops expect.
"""
from typing import Tuple

import torch
from torch import Tensor

# The torch versions whose internals were checked by
# tests/test_torch_internals.py.
CHECKED_TORCH = '2.13'


class TorchInternalsError(RuntimeError):
    """A private torch internal an op needs is missing."""


def _missing(name: str) -> TorchInternalsError:
    return TorchInternalsError(
        f'{name} is missing in torch {torch.__version__} (mrla_mm was '
        f'checked with torch {CHECKED_TORCH}); the MRLA-base value '
        'gradients gathered by mrla_mm.ops.readout_gradients need it')


def current_graph_task_id() -> int:
    """The id of the autograd backward pass running now (-1 outside a
    backward): ``torch._C._current_graph_task_id``."""
    fn = getattr(torch._C, '_current_graph_task_id', None)
    if fn is None:
        raise _missing('torch._C._current_graph_task_id')
    return fn()


def will_engine_execute_node(node) -> bool:
    """Whether the running backward pass will execute the autograd
    ``node``: ``torch._C._will_engine_execute_node``."""
    fn = getattr(torch._C, '_will_engine_execute_node', None)
    if fn is None:
        raise _missing('torch._C._will_engine_execute_node')
    return fn(node)


# What ATen's fused add and ReLU takes (its CPU kernel only).
_ADD_RELU_DTYPES = (torch.float32, torch.float64)
_ADD_RELU = hasattr(torch.ops.aten, '_add_relu_')


def add_relu_(out: Tensor, other: Tensor) -> Tensor:
    """``out = relu(out + other)`` in place: ATen's fused ``_add_relu_``
    (one pass) where it takes ``out``, else ``add_`` and ``relu_``, the
    same bits in two passes."""
    if (_ADD_RELU and out.device.type == 'cpu'
            and out.dtype in _ADD_RELU_DTYPES):
        return torch.ops.aten._add_relu_(out, other)
    return out.add_(other).relu_()


def tensor_identity(t: Tensor) -> Tuple[int, int]:
    """``(address, version)`` of ``t``'s data: two tensors with the same
    identity, shape and strides hold the same values, as long as the
    version (bumped by every in-place change, ``Tensor._version``) is the
    same."""
    return t.data_ptr(), t._version

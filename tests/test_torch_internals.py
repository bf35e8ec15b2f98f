"""The private torch internals the ops rely on
(:mod:`mrla_mm.ops.torch_internals`) still behave as the ops expect.

A torch upgrade that changes one fails here by name, before the ops that
need it go wrong in a training step.
"""
import re

import pytest
import torch

from mrla_mm.ops import torch_internals
from mrla_mm.ops.torch_internals import (
    TorchInternalsError,
    add_relu_,
    current_graph_task_id,
    tensor_identity,
    will_engine_execute_node,
)


def test_internals_exist():
    for name in ('_current_graph_task_id', '_will_engine_execute_node'):
        assert hasattr(torch._C, name), (
            f'torch._C.{name} is gone in torch {torch.__version__}: see '
            'mrla_mm/ops/torch_internals.py')
    assert hasattr(torch.ops.aten, '_add_relu_'), (
        f'aten._add_relu_ is gone in torch {torch.__version__}')
    assert torch_internals._ADD_RELU


def _probe(on_backward):
    """An identity op that calls ``on_backward()`` in its backward."""

    class Probe(torch.autograd.Function):

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            on_backward()
            return grad

    return Probe


def test_graph_task_id_is_one_per_backward_pass():
    """-1 outside a backward; one id inside a pass, another in the next."""
    assert current_graph_task_id() == -1
    seen = []
    Probe = _probe(lambda: seen.append(current_graph_task_id()))
    x = torch.ones(3, requires_grad=True)
    y = Probe.apply(x) + Probe.apply(x)
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    assert len(seen) == 4 and all(isinstance(i, int) for i in seen)
    assert seen[0] == seen[1] != seen[2] == seen[3]
    assert -1 not in seen


def test_will_engine_execute_node():
    """True for a node the running backward pass reaches, False for one
    off its path."""
    answers = {}

    def ask():
        answers['reached'] = will_engine_execute_node(reached)
        answers['other'] = will_engine_execute_node(other)

    Probe = _probe(ask)
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    inner = a * 2
    other = (b * 3).grad_fn
    out = Probe.apply(inner)
    reached = inner.grad_fn
    out.sum().backward()
    assert answers == {'reached': True, 'other': False}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_add_relu_is_add_then_relu_in_place(dtype):
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, 4, 4, generator=g, dtype=dtype)
    other = torch.randn(2, 3, 4, 4, generator=g, dtype=dtype)
    want = (out + other).relu()
    ptr = out.data_ptr()
    got = add_relu_(out, other)
    assert got.data_ptr() == ptr and torch.equal(got, want)


def test_add_relu_falls_back_where_aten_lacks_it(monkeypatch):
    monkeypatch.setattr(torch_internals, '_ADD_RELU', False)
    out, other = torch.randn(5), torch.randn(5)
    want = (out + other).relu()
    assert torch.equal(add_relu_(out, other), want)


def test_tensor_identity_follows_storage_and_in_place_changes():
    t = torch.zeros(4)
    address, version = tensor_identity(t)
    assert tensor_identity(t.view(2, 2))[0] == address
    assert tensor_identity(t.clone())[0] != address
    t.add_(1)
    assert tensor_identity(t) == (address, version + 1)


def test_missing_internal_names_the_torch_version(monkeypatch):
    monkeypatch.delattr(torch._C, '_current_graph_task_id')
    with pytest.raises(TorchInternalsError,
                       match='_current_graph_task_id is missing in torch ' +
                       re.escape(torch.__version__)):
        current_graph_task_id()
    monkeypatch.delattr(torch._C, '_will_engine_execute_node')
    with pytest.raises(TorchInternalsError,
                       match='_will_engine_execute_node is missing'):
        will_engine_execute_node(None)

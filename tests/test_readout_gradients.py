"""MRLA-base's value gradients gathered where each value's backward runs
(:class:`ReadoutGradients`), against autograd's accumulation of them."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mrla_mm.ops import channel_descriptor
from mrla_mm.ops.mrla_base import mrla_base_batch_norm
from mrla_mm.ops.mrla_light import mrla_value_map
from mrla_mm.ops.readout_gradients import ReadoutGradients
from conftest import rel_err

HEADS = 2


@pytest.fixture(autouse=True)
def _compiled_backend(monkeypatch):
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')


def _params(t, c, dtype, seed=0, chain=True):
    """Leaves of a group of ``t`` layers: its input (with ``chain``, else
    one per layer), kernels, query and key scales, and the norms' weights
    and biases."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g,
                           dtype=dtype).requires_grad_()

    return dict(
        inputs=[r(2, c, 5, 6) for _ in range(1 if chain else t)],
        kernels=[r(c, 1, 3, 3) for _ in range(t)],
        q_scales=[r(c) for _ in range(t)],
        k_scales=[r(c) for _ in range(t)],
        gammas=[r(c) for _ in range(t)],
        betas=[r(c) for _ in range(t)])


def _group(p, store, chain=True, recompute=True):
    """The outputs of the group's layers; with ``chain`` each layer's input
    is computed from the previous layer's output, as in a ResNet stage."""
    keys, values, sources, outs = [], [], [], []
    for t in range(len(p['kernels'])):
        x = torch.tanh(outs[-1]) if chain and outs else p['inputs'][t]
        y = channel_descriptor(x)
        keys.append(y * p['k_scales'][t])
        values.append(mrla_value_map(x, p['kernels'][t], 'identity'))
        sources.append(x)
        outs.append(
            mrla_base_batch_norm(
                x, y * p['q_scales'][t], torch.stack(keys, 1), values, HEADS,
                sources=sources if recompute else None,
                kernels=p['kernels'][:t + 1] if recompute else None,
                gradients=store, running_mean=None, running_var=None,
                weight=p['gammas'][t], bias=p['betas'][t], training=True))
    return outs


def _leaves(p):
    return [leaf for group in p.values() for leaf in group]


def _grads(outs, p, **kwargs):
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
               for o in outs)
    leaves = [leaf for leaf in _leaves(p) if leaf.requires_grad]
    return torch.autograd.grad(loss, leaves, **kwargs)


@pytest.mark.parametrize('chain', [True, False])
@pytest.mark.parametrize('recompute', [True, False])
def test_gathered_gradients_are_autograds(chain, recompute):
    """Every layer's output contributes to the loss; the gradients of all
    inputs and parameters equal those autograd accumulates, float64."""
    p = _params(5, 8, torch.float64, chain=chain)
    store = ReadoutGradients()
    gathered = _grads(_group(p, store, chain, recompute), p)
    accumulated = _grads(_group(p, None, chain, recompute), p)
    for a, b in zip(gathered, accumulated):
        assert rel_err(a, b) < 1e-12
    assert not store._passes  # nothing left over after the pass


def test_each_backward_pass_gathers_its_own():
    """With ``retain_graph`` a second pass gives the first's gradients; a
    pass that reaches only part of the group (``autograd.grad`` with a
    middle layer's input) gives autograd's."""
    p = _params(4, 4, torch.float64, seed=3)
    store = ReadoutGradients()
    outs = _group(p, store)
    first = _grads(outs, p, retain_graph=True)
    second = _grads(outs, p, retain_graph=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    ref_outs = _group(p, None)
    # The input of layer 2 (made from layer 1's output) and the kernels of
    # the layers from 2 on: layers 0 and 1 do not run in that pass.
    loss, ref_loss = (sum(o.square().sum() for o in group)
                      for group in (outs, ref_outs))
    part = torch.autograd.grad(loss, [outs[1], *p['kernels'][2:]],
                               retain_graph=True)
    ref = torch.autograd.grad(ref_loss, [ref_outs[1], *p['kernels'][2:]])
    for a, b in zip(part, ref):
        assert rel_err(a, b) < 1e-12
    # The whole group again after the partial pass.
    for a, b in zip(_grads(outs, p), first):
        assert torch.equal(a, b)


def test_gathering_keeps_the_backward_within_the_forward():
    """The backward of a group of twelve chained layers, values recomputed:
    autograd's accumulation holds a gradient per earlier value from the
    start, the gathered gradients do not."""
    t, c = 12, 16
    p = _params(t, c, torch.float32)
    map_bytes = 2 * c * 5 * 6 * 4
    for leaf in _leaves(p):
        leaf.requires_grad_(False)
    p['inputs'][0].requires_grad_()

    def backward_rise(store):
        """Bytes the backward holds at its most above what the forward
        left, from the profiler's allocation events."""
        with profile(activities=[ProfilerActivity.CPU],
                     profile_memory=True) as prof:
            with record_function('forward'):
                loss = _group(p, store)[-1].sum()
            loss.backward()
        events = list(prof.profiler.kineto_results.events())
        forward = next(e for e in events if e.name() == 'forward')
        forward_end = forward.start_ns() + forward.duration_ns()
        live = held = peak = 0
        for start, nbytes in sorted((e.start_ns(), e.nbytes())
                                    for e in events
                                    if e.name() == '[memory]'):
            live += nbytes
            if start <= forward_end:
                held = live
            else:
                peak = max(peak, live)
        return peak - held

    gathered = backward_rise(ReadoutGradients())
    accumulated = backward_rise(None)
    # At least the accumulated gradients of the eleven earlier values less.
    assert gathered <= accumulated - (t - 1) * map_bytes


def test_a_layer_running_before_a_later_one_raises(monkeypatch):
    """Should autograd run a layer's backward while a later layer of its
    group is still to run, the layer raises instead of taking a partial
    value gradient."""
    p = _params(3, 4, torch.float64, chain=False)
    outs = _group(p, ReadoutGradients(), chain=False)
    # Layer 2 never runs in a pass from layer 0's output; the engine is
    # made to say that it will.
    monkeypatch.setattr(torch._C, '_will_engine_execute_node',
                        lambda node: True)
    with pytest.raises(RuntimeError, match='layer 0 of an MRLA-base group '
                       'ran before that of its later layer 1'):
        outs[0].sum().backward()


def test_a_layer_joins_once():
    """A store serves one forward pass of a group: a layer position seen
    twice is refused."""
    p = _params(2, 4, torch.float64)
    store = ReadoutGradients()
    _group(p, store)
    assert store.joined(0) and store.joined(1) and not store.joined(2)
    with pytest.raises(ValueError, match='layer 0 of this MRLA-base group '
                       'joined already; a group is one forward pass'):
        _group(p, store)

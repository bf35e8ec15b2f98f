"""The MRLA-base branch ``x + relu(batch_norm(readout))`` that recomputes
its maps in the backward, against the PyTorch composition."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import mrla_mm.ops.mrla_base as base_ops
from mrla_mm.models.layers import MRLABase
from mrla_mm.ops import base_weights, mrla_value
from mrla_mm.ops.mrla_base import (
    mrla_base_batch_norm,
    mrla_base_batch_norm_pytorch,
)
from mrla_mm.ops.mrla_light import mrla_value_map
from conftest import rel_err
from devices import DEVICES


@pytest.fixture(autouse=True)
def _compiled_backend(monkeypatch):
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')


def _inputs(b, heads, d, h, w, t, dtype, seed, device='cpu'):
    """``x, q, keys, gamma, beta, running_mean, running_var`` and the
    ``t`` sources and kernels of the values."""
    g = torch.Generator().manual_seed(seed)
    c = heads * d

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    small = [r(b, c, h, w), r(b, c), r(b, t, c), r(c), r(c), r(c),
             (torch.rand(c, generator=g, dtype=dtype) + 0.5).to(device)]
    return small, [r(b, c, h, w) for _ in range(t)], [
        r(c, 1, 3, 3) for _ in range(t)
    ]


def _fused(x, q, keys, gamma, beta, rm, rv, sources, kernels, heads, act,
           training, recompute=True):
    values = [mrla_value_map(s, k, act) for s, k in zip(sources, kernels)]
    return mrla_base_batch_norm(
        x, q, keys, values, heads,
        sources=sources if recompute else None,
        kernels=kernels if recompute else None,
        value_act=act, running_mean=rm, running_var=rv, weight=gamma,
        bias=beta, training=training, momentum=0.1, eps=1e-5)


def _reference(x, q, keys, gamma, beta, rm, rv, sources, kernels, heads, act,
               training):
    values = [mrla_value(s, k, act) for s, k in zip(sources, kernels)]
    return mrla_base_batch_norm_pytorch(x, base_weights(q, keys, heads),
                                        values, rm, rv, gamma, beta,
                                        training, 0.1, 1e-5)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('act', ['identity', 'gelu'])
@pytest.mark.parametrize('t', [1, 3])
@pytest.mark.parametrize('recompute', [True, False])
def test_gradcheck(device, training, act, t, recompute):
    small, sources, kernels = _inputs(2, 2, 2, 3, 4, t, torch.float64, 3,
                                      device)
    x, q, keys, gamma, beta, rm, rv = small
    keys = keys * 0.5
    diff = [a.requires_grad_() for a in (x, q, keys, gamma, beta, *sources,
                                         *kernels)]

    def f(x, q, keys, gamma, beta, *maps):
        # gradcheck must not move the running statistics.
        stats = (None, None) if training else (rm, rv)
        return _fused(x, q, keys, gamma, beta, *stats, list(maps[:t]),
                      list(maps[t:]), 2, act, training, recompute)

    assert torch.autograd.gradcheck(f, diff)
    assert torch.autograd.gradgradcheck(f, diff)


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=40, deadline=None)
# Found on an H200: CUDA's norm backward returned the affine gradients of a
# norm without affine parameters.
@example(b=1, heads=1, d=1, h=1, w=4, t=1, seed=0, act='identity',
         training=True, affine=False, recompute=False)
@given(b=st.integers(1, 3), heads=st.integers(1, 4), d=st.integers(1, 6),
       h=st.integers(1, 8), w=st.integers(1, 8), t=st.integers(1, 6),
       seed=st.integers(0, 2**16), act=st.sampled_from(['identity', 'gelu']),
       training=st.booleans(), affine=st.booleans(),
       recompute=st.booleans())
def test_compiled_matches_pytorch(device, b, heads, d, h, w, t, seed, act,
                                  training, affine, recompute):
    """float32 output, every gradient and the running statistics: as close
    to the float64 result as PyTorch's own float32 composition is (or
    within 1e-5). Batch statistics over fewer than 4 values per channel
    are left out, as for the light branch (gradients there are
    cancellations of rounding-size terms)."""
    assume(not training or b * h * w >= 4)
    small, sources, kernels = _inputs(b, heads, d, h, w, t, torch.float32,
                                      seed, device)
    if not affine:
        small[3] = small[4] = None
    results = {}
    for name, fn, dtype in [('compiled', _fused, torch.float32),
                            ('pytorch', _reference, torch.float32),
                            ('exact', _reference, torch.float64)]:
        s, src, ker = ([None if a is None else a.detach().to(dtype).clone()
                        for a in group]
                       for group in (small, sources, kernels))
        diff = [a.requires_grad_() for a in s[:5] + src + ker
                if a is not None]
        out = (fn(*s, src, ker, heads, act, training, recompute)
               if fn is _fused else fn(*s, src, ker, heads, act, training))
        grad = torch.randn(out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(seed))
        grads = torch.autograd.grad(out, diff, grad.to(out))
        results[name] = [out, *grads, s[5], s[6]]
    for got, fp32, exact in zip(*results.values()):
        assert rel_err(got, exact) <= max(1e-5, 4 * rel_err(fp32, exact))


@pytest.mark.parametrize('training', [True, False])
def test_affine_gradients_only_when_affine(training, monkeypatch):
    """Without affine parameters the backward returns no gradient for them,
    also where ATen's norm backward computes them regardless of its output
    mask (as its CUDA kernel does)."""
    aten_backward = torch.ops.aten.native_batch_norm_backward
    masks = []

    def unmasked(*args):
        masks.append(args[-1])
        return aten_backward(*args[:-1], [True, True, True])

    monkeypatch.setattr(torch.ops.aten, 'native_batch_norm_backward',
                        unmasked)
    small, sources, kernels = _inputs(2, 2, 2, 3, 4, 2, torch.float64, 5)
    small[3] = small[4] = None
    stats = (None, None) if training else tuple(small[5:])
    grads = {}
    for fn in (_fused, _reference):
        x, q, keys = (a.clone().requires_grad_() for a in small[:3])
        out = fn(x, q, keys, None, None, *stats, sources, kernels, 2,
                 'identity', training)
        grads[fn] = torch.autograd.grad(out, (x, q, keys),
                                        torch.ones_like(out))
    assert masks == [[True, False, False]]
    for got, ref in zip(grads[_fused], grads[_reference]):
        assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('mode', ['train', 'eval', 'untracked'])
@pytest.mark.parametrize('recompute', [True, False])
def test_layer_with_norm_module_matches_the_module(momentum, mode,
                                                   recompute):
    """``MRLABase(..., norm=bn)`` over a group of three layers is
    ``x + relu(bn(MRLABase(...)))``: outputs, the gradients of every
    input and parameter, and the norms' buffers, over two steps."""
    torch.manual_seed(0)
    layers = nn.ModuleList(
        MRLABase(16, dim_per_head=4, recompute_values=recompute)
        for _ in range(3)).double()
    norms = nn.ModuleList(
        nn.BatchNorm2d(16, momentum=momentum,
                       track_running_stats=mode != 'untracked')
        for _ in range(3)).double()
    for bn in norms:
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
    norms.train(mode != 'eval')
    fused_norms = copy.deepcopy(norms)
    for step in range(2):
        xs = [
            torch.randn(2, 16, 6, 5, dtype=torch.float64, requires_grad=True)
            for _ in range(3)
        ]
        cache, ref_cache = layers[0].new_cache(), layers[0].new_cache()
        fused = [
            layer(x, cache, norm=bn)
            for layer, x, bn in zip(layers, xs, fused_norms)
        ]
        ref = [
            x + torch.relu(bn(layer(x, ref_cache)))
            for layer, x, bn in zip(layers, xs, norms)
        ]
        for a, r in zip(fused, ref):
            assert rel_err(a, r) < 1e-12
        gs = [torch.randn_like(r) for r in ref]
        params = [*xs, *layers.parameters()]
        for a, r in zip(
                torch.autograd.grad(fused, params + list(
                    fused_norms.parameters()), gs),
                torch.autograd.grad(ref, params + list(norms.parameters()),
                                    gs)):
            assert rel_err(a, r) < 1e-12
        for (name, buf), fused_buf in zip(norms.named_buffers(),
                                          fused_norms.buffers()):
            assert torch.allclose(fused_buf, buf, rtol=1e-12,
                                  atol=0), (step, name)


def test_no_map_of_its_own_is_kept_for_the_backward():
    """In training the branch keeps, of the maps, only the values'
    sources (maps the network keeps anyway): no value map, no readout, no
    norm output; without sources, the values and no other map. The
    PyTorch composition keeps all of those."""
    small, sources, kernels = _inputs(2, 2, 4, 8, 8, 3, torch.float32, 0)
    x, q, keys, gamma, beta, rm, rv = small
    for t in (x, q, keys, gamma, beta, *sources, *kernels):
        t.requires_grad_()

    def saved_maps(fn, *recompute):
        maps = []

        def pack(t):
            if t.shape == x.shape:
                maps.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, q, keys, gamma, beta, rm.clone(), rv.clone(), sources,
               kernels, 2, 'identity', True, *recompute)
        return {m.untyped_storage().data_ptr() for m in maps}

    inputs = {t.untyped_storage().data_ptr() for t in (x, *sources)}
    assert saved_maps(_fused) <= inputs
    # The three value maps.
    assert len(saved_maps(_fused, False) - inputs) == 3
    # The three value maps, the readout and the norm's output.
    assert len(saved_maps(_reference) - inputs) == 5


@pytest.mark.parametrize('recompute,passes', [(True, 2), (False, 1)])
def test_kept_values_are_read_in_one_pass(recompute, passes, monkeypatch):
    """Six values: the readout and its gradients take recomputed values
    four at a time (two kernel calls each, in the forward too, so that
    it sums as the backward does) and kept values all at once (one)."""
    calls = []

    def count(name, fn):
        monkeypatch.setattr(base_ops, name,
                            lambda *a: calls.append(name) or fn(*a))

    count('readout_inference', base_ops.readout_inference)
    count('readout_backward', base_ops.readout_backward)
    small, sources, kernels = _inputs(2, 2, 4, 5, 5, 6, torch.float64, 0)
    x = small[0].requires_grad_()
    sources = [s.requires_grad_() for s in sources]
    out = _fused(*small, sources, kernels, 2, 'identity', True, recompute)
    assert calls == ['readout_inference'] * passes
    out.sum().backward()
    assert calls == (['readout_inference'] * (2 * passes) +
                     ['readout_backward'] * passes)
    assert x.grad is not None and all(s.grad is not None for s in sources)


def test_bad_arguments_are_named():
    small, sources, kernels = _inputs(1, 1, 4, 1, 1, 2, torch.float32, 0)
    x, q, keys, gamma, beta, rm, rv = small
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        _fused(x, q, keys, gamma, beta, None, None, sources, kernels, 1,
               'identity', True)
    with pytest.raises(ValueError, match='running_mean and running_var'):
        _fused(x, q, keys, gamma, beta, None, None, sources, kernels, 1,
               'identity', False)
    values = [mrla_value(s, k, 'identity') for s, k in zip(sources, kernels)]
    with pytest.raises(ValueError, match='one entry per layer, got 2, 1 '
                       'and 2'):
        mrla_base_batch_norm(x, q, keys, values, 1, sources=sources[:1],
                             kernels=kernels, running_mean=rm,
                             running_var=rv)
    with pytest.raises(ValueError, match=r'sources\[1\] must have the shape '
                       r'of values\[1\] \(1, 4, 1, 1\), got \(1, 4, 2, 1\)'):
        mrla_base_batch_norm(x, q, keys, values, 1,
                             sources=[sources[0], torch.zeros(1, 4, 2, 1)],
                             kernels=kernels, running_mean=rm,
                             running_var=rv)
    with pytest.raises(ValueError, match='sources and kernels must be given '
                       'together or not at all, got sources=list, '
                       'kernels=NoneType'):
        mrla_base_batch_norm(x, q, keys, values, 1, sources=sources,
                             running_mean=rm, running_var=rv)
    with pytest.raises(ValueError, match='keys hold 2 layers but values '
                       'hold 1'):
        mrla_base_batch_norm(x, q, keys, values[:1], 1, sources=sources[:1],
                             kernels=kernels[:1], running_mean=rm,
                             running_var=rv)
    layer = MRLABase(4, num_heads=1)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match='norm replaces scale, shift and '
                       'add_input'):
        layer(x, layer.new_cache(), add_input=True, norm=nn.BatchNorm2d(4))

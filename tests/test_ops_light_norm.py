"""The fused MRLA-light branch ``x + batch_norm(core)`` against PyTorch."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mrla_mm.models.layers import MRLALight
from mrla_mm.ops import ext_loader
from mrla_mm.ops.batch_norm_stats import advance_batch_norm
from mrla_mm.ops.mrla_light import (
    mrla_light_batch_norm,
    mrla_light_batch_norm_pytorch,
)
from conftest import rel_err
from devices import DEVICES


@pytest.fixture(autouse=True)
def _compiled_backend(monkeypatch):
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')


def _inputs(b, heads, d, h, w, dtype, seed, device='cpu',
            fmt=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    c = heads * d

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    maps = [r(b, c, h, w).contiguous(memory_format=fmt) for _ in range(2)]
    small = [
        r(c, 1, 3, 3),
        torch.rand(b, heads, generator=g, dtype=dtype),
        r(c),
        r(c),
        r(c),
    ]
    stats = [r(c), torch.rand(c, generator=g, dtype=dtype) + 0.5]
    return [t.to(device) for t in maps + small + stats]


def _call(fn, x, o, wv, gate, lam, gamma, beta, rm, rv, act, training):
    return fn(x, wv, gate, lam, o, act, running_mean=rm, running_var=rv,
              weight=gamma, bias=beta, training=training, momentum=0.1,
              eps=1e-5)


def _reference(x, o, wv, gate, lam, gamma, beta, rm, rv, act, training):
    return mrla_light_batch_norm_pytorch(x, wv, gate, lam, o, act, rm, rv,
                                         gamma, beta, training, 0.1, 1e-5)


# On the CPU a channels_last call runs the NCHW kernels on copies.
FORMATS = (torch.contiguous_format, torch.channels_last)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('act', ['identity', 'gelu'])
def test_gradcheck(device, training, act):
    for fmt in FORMATS:
        x, o, wv, gate, lam, gamma, beta, rm, rv = _inputs(
            2, 2, 3, 4, 5, torch.float64, 3, device, fmt)
        diff = [t.requires_grad_() for t in (x, o, wv, gate, lam, gamma,
                                              beta)]

        def f(*a):
            # gradcheck must not move the running statistics.
            stats = (None, None) if training else (rm, rv)
            return _call(mrla_light_batch_norm, *a, *stats, act, training)

        assert torch.autograd.gradcheck(f, diff)
        assert torch.autograd.gradgradcheck(f, diff)


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 3), heads=st.integers(1, 4), d=st.integers(1, 8),
       h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**16),
       act=st.sampled_from(['identity', 'gelu']), training=st.booleans(),
       affine=st.booleans())
def test_compiled_matches_pytorch(device, b, heads, d, h, w, seed, act,
                                  training, affine):
    """float32 output, input and norm-parameter gradients and running
    statistics: the kernels are as close to the float64 result as
    PyTorch's own float32 composition is (or within 1e-5).

    Batch statistics over fewer than 4 values per channel are left out:
    there the normalised output hardly depends on its input, and every
    gradient through it is a cancellation of rounding-size terms."""
    assume(not training or b * h * w >= 4)
    ins = _inputs(b, heads, d, h, w, torch.float32, seed, device)
    if not affine:
        ins[5] = ins[6] = None
    results = {}
    for name, fn, dtype in [('compiled', mrla_light_batch_norm,
                             torch.float32),
                            ('pytorch', _reference, torch.float32),
                            ('exact', _reference, torch.float64)]:
        t = [None if a is None else a.detach().to(dtype).clone()
             for a in ins]
        diff = [a.requires_grad_() for a in t[:7] if a is not None]
        if fn is _reference:
            out = fn(*t, act, training)
        else:
            out = _call(fn, *t, act, training)
        grad = torch.randn(out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(seed))
        grads = torch.autograd.grad(out, diff, grad.to(out))
        results[name] = [out, *grads, t[7], t[8]]
    for got, fp32, exact in zip(*results.values()):
        assert rel_err(got, exact) <= max(1e-5, 4 * rel_err(fp32, exact))


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('mode', ['train', 'eval', 'untracked'])
def test_layer_with_norm_module_matches_the_module(momentum, mode):
    """``MRLALight(..., norm=bn)`` is ``x + bn(MRLALight(...))``: output,
    gradients and the module's buffers, over three steps."""
    torch.manual_seed(0)
    layer = MRLALight(16, dim_per_head=4).double()
    bn = nn.BatchNorm2d(16, momentum=momentum,
                        track_running_stats=mode != 'untracked').double()
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    bn.train(mode != 'eval')
    fused_bn = copy.deepcopy(bn)
    for step in range(3):
        x = torch.randn(2, 16, 6, 5, dtype=torch.float64, requires_grad=True)
        o = torch.randn_like(x, requires_grad=True)
        fused = layer(x, o, norm=fused_bn)
        ref = x + bn(layer(x, o))
        assert rel_err(fused, ref) < 1e-12
        g = torch.randn_like(ref)
        params = [x, o, *layer.parameters()]
        for a, r in zip(
                torch.autograd.grad(fused, params + [fused_bn.weight], g),
                torch.autograd.grad(ref, params + [bn.weight], g)):
            assert rel_err(a, r) < 1e-12
        for name, buf in bn.named_buffers():
            assert torch.allclose(
                dict(fused_bn.named_buffers())[name], buf, rtol=1e-12,
                atol=0), (step, name)


def kernel_cases(test):
    """Runs ``test(device, dtype, shape)`` on the shapes that exercise the
    CPU kernels' channel blocks: 21 channels of 7x7 planes leave a last
    block short; 56x56 planes take a block each."""
    for mark in reversed([
            pytest.mark.parametrize('device', DEVICES),
            pytest.mark.parametrize('dtype', [torch.float32, torch.float64]),
            pytest.mark.parametrize('shape', [(3, 21, 7, 7), (2, 4, 56, 56),
                                              (2, 6, 1, 1), (1, 40, 9, 5)])
    ]):
        test = mark(test)
    return test


@kernel_cases
def test_norm_backward_is_the_statistics_then_the_backward(device, dtype,
                                                           shape):
    """``mrla_light_norm_backward`` (one op: on the CPU a kernel that takes
    the gradient statistics and the gradients of a block of channels
    together) gives the bits of the statistics op, the coefficients and
    the backward op run one after the other."""
    ext = ext_loader.load_ext()
    b, c, h, w = shape
    x, o, g = (torch.randn(shape, dtype=dtype, device=device)
               for _ in range(3))
    weight = torch.randn(c, 9, dtype=dtype, device=device)
    gate = torch.rand(b, 1, dtype=dtype, device=device)
    lam, mean, gamma = (torch.randn(c, dtype=dtype, device=device)
                        for _ in range(3))
    invstd = torch.rand(c, dtype=dtype, device=device) + 0.5
    for act in (0, 1):
        for batch_stats in (True, False):
            got = ext.mrla_light_norm_backward(g, x, weight, gate, lam, o,
                                               gamma, mean, invstd,
                                               batch_stats, act)
            sums = ext.mrla_light_stats(x, weight, gate, lam, o, g, mean,
                                        act).sum(0)
            a = gamma * invstd
            n = b * h * w
            if batch_stats:
                coef = [-a * invstd * invstd * sums[:, 1] / n,
                        -a * sums[:, 0] / n]
            else:
                coef = [torch.zeros_like(a)] * 2
            want = ext.mrla_light_backward(g, x, weight, gate, lam, o,
                                           torch.stack([a, *coef, mean]),
                                           act)
            for name, u, v in zip(
                    ('grad_x', 'grad_o_prev', 'weight', 'gate', 'lambda',
                     'sums'), got, [*want, sums]):
                assert torch.equal(u, v), (name, act, batch_stats)
    with pytest.raises(RuntimeError, match=f'gamma must be a contiguous '
                       f'tensor of {c} elements'):
        ext.mrla_light_norm_backward(g, x, weight, gate, lam, o, gamma[:1],
                                     mean, invstd, True, 0)


@kernel_cases
def test_norm_forward_is_the_statistics_then_the_output(device, dtype,
                                                        shape):
    """``mrla_light_norm_forward`` (on the CPU one kernel per block of
    channels that keeps ``z`` in cache from the statistics to the output)
    gives the bits of the statistics op, the parallel merge of the planes'
    moments in float64 and the forward op with the norm folded in, run one
    after the other; with running statistics, the bits of the forward op
    on them."""
    ext = ext_loader.load_ext()
    b, c, h, w = shape
    x, o = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
    # An offset far from zero: the merge must not cancel.
    x = x + 30
    weight = torch.randn(c, 9, dtype=dtype, device=device)
    gate = torch.rand(b, 1, dtype=dtype, device=device)
    lam, gamma, beta, r_mean = (torch.randn(c, dtype=dtype, device=device)
                                for _ in range(4))
    r_var = torch.rand(c, dtype=torch.float32, device=device) + 0.5
    none = x.new_empty(0)
    for act in (0, 1):
        y, mean, invstd, var = ext.mrla_light_norm_forward(
            x, weight, gate, lam, o, gamma, beta, none, none, True, 1e-5, act)
        stats = ext.mrla_light_stats(x, weight, gate, lam, o, none, none,
                                     act).double()
        plane_mean, plane_m2 = stats[..., 0], stats[..., 1]
        want_mean = plane_mean.mean(0)
        want_var = (plane_m2.sum(0) + h * w * (
            (plane_mean - want_mean)**2).sum(0)) / (b * h * w)
        want_invstd = torch.rsqrt(want_var + 1e-5).to(dtype)
        want_mean = want_mean.to(dtype)
        scale = want_invstd * gamma
        shift = beta - want_mean * scale
        want_y = ext.mrla_light_forward(x, weight, gate, lam, o, scale,
                                        shift, act, True)
        for name, u, v in zip(('y', 'mean', 'invstd', 'var'),
                              (y, mean, invstd, var),
                              (want_y, want_mean, want_invstd, want_var)):
            assert torch.equal(u, v), (name, act)
        z = ext.mrla_light_forward(x, weight, gate, lam, o, none, none, act,
                                   False).double()
        torch.testing.assert_close(
            var, z.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)

        y, mean, invstd, var = ext.mrla_light_norm_forward(
            x, weight, gate, lam, o, gamma, beta, r_mean, r_var, False, 1e-5,
            act)
        want_invstd = torch.rsqrt(r_var.double() + 1e-5).to(dtype)
        scale = want_invstd * gamma
        want_y = ext.mrla_light_forward(x, weight, gate, lam, o, scale,
                                        beta - r_mean * scale, act, True)
        assert torch.equal(y, want_y), act
        assert torch.equal(invstd, want_invstd) and torch.equal(mean, r_mean)
        assert torch.equal(var, r_var.double())
    with pytest.raises(RuntimeError, match=f'beta must be a contiguous '
                       f'tensor of {c} elements'):
        ext.mrla_light_norm_forward(x, weight, gate, lam, o, gamma, beta[:1],
                                    none, none, True, 1e-5, 0)
    with pytest.raises(RuntimeError, match=rf'var_in must be a float tensor '
                       rf'of shape \[{c}\] without batch_stats'):
        ext.mrla_light_norm_forward(x, weight, gate, lam, o, gamma, beta,
                                    r_mean, none, False, 1e-5, 0)
    with pytest.raises(RuntimeError, match='eps must be positive, got 0'):
        ext.mrla_light_norm_forward(x, weight, gate, lam, o, gamma, beta,
                                    none, none, True, 0.0, 0)


def test_bad_arguments_are_named():
    x, o, wv, gate, lam, gamma, beta, rm, rv = _inputs(
        1, 1, 4, 1, 1, torch.float32, 0)
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        _call(mrla_light_batch_norm, x, o, wv, gate, lam, gamma, beta, None,
              None, 'identity', True)
    with pytest.raises(ValueError, match='running_mean and running_var'):
        _call(mrla_light_batch_norm, x, o, wv, gate, lam, gamma, beta, None,
              None, 'identity', False)
    with pytest.raises(ValueError, match='value_act'):
        _call(mrla_light_batch_norm, x, o, wv, gate, lam, gamma, beta, rm,
              rv, 'relu', False)
    layer = MRLALight(4, num_heads=1)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match='norm replaces scale, shift and '
                       'add_input'):
        layer(x, x, add_input=True, norm=nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match='norm must be a BatchNorm module, '
                       'got LayerNorm'):
        advance_batch_norm(nn.LayerNorm(4))


@pytest.mark.parametrize('training', [True, False])
def test_cpu_channels_last_runs_on_nchw_copies(training):
    """auto sends these to PyTorch; forced onto the kernels, a channels_last
    call runs the NCHW kernels on copies of its maps: the bits of the NCHW
    call (output, gradients, running statistics), output in channels_last.
    """
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, o, wv, gate, lam, gamma, beta, rm, rv = _inputs(
            2, 2, 4, 5, 6, torch.float32, 0, fmt=fmt)
        diff = [t.requires_grad_() for t in (x, o, wv, gate, lam, gamma,
                                              beta)]
        out = _call(mrla_light_batch_norm, x, o, wv, gate, lam, gamma, beta,
                    rm, rv, 'gelu', training)
        assert out.is_contiguous(memory_format=fmt)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(
            1)).contiguous(memory_format=fmt)
        grads = torch.autograd.grad(out, diff, grad)
        results.append([out, *grads, rm, rv])
    for nchw, cl in zip(*results):
        assert torch.equal(nchw, cl)


def test_core_output_is_not_kept_for_the_backward():
    """In training the fused branch keeps only tensors that exist anyway
    (its inputs); the PyTorch composition also keeps the core's output."""
    x, o, wv, gate, lam, gamma, beta, rm, rv = _inputs(
        2, 2, 4, 8, 8, torch.float32, 0)
    x.requires_grad_()

    def saved_maps(fn):
        maps = []

        def pack(t):
            if t.shape == x.shape:
                maps.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _call(fn, x, o, wv, gate, lam, gamma, beta, rm.clone(),
                  rv.clone(), 'identity', True)
        return {m.untyped_storage().data_ptr() for m in maps}

    inputs = {x.untyped_storage().data_ptr(), o.untyped_storage().data_ptr()}
    assert saved_maps(mrla_light_batch_norm) <= inputs
    assert not saved_maps(mrla_light_batch_norm_pytorch) <= inputs



def test_auto_fuses_the_branch_from_4x4_planes(monkeypatch):
    """auto runs the fused training branch, like the light core, from 4x4
    planes on (measured faster than PyTorch there since the flat plane
    loops, 0.86x-0.89x at 3x3)."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'auto')
    small, large = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 4, 4)
    for op in ('mrla_light_batch_norm', 'mrla_light_core'):
        assert not ext_loader.use_compiled(op, (small, ))
        assert ext_loader.use_compiled(op, (large, ))

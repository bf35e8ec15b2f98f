"""The compiled MRLA ops against their PyTorch composition and autograd."""
import functools
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from mrla_mm.ops import ext_loader, mrla_math
from mrla_mm.ops.mrla_base import (
    MRLABaseReadoutFunction,
    mrla_base_readout,
    readout_backward,
)
from mrla_mm.ops.mrla_light import (
    MRLALightCoreFunction,
    MRLAValueFunction,
    mrla_light_core,
    mrla_light_core_pytorch,
    mrla_value_map,
)
from mrla_mm.ops.residual_relu_pool import residual_relu_pool
from conftest import rel_err
from devices import DEVICES

FORMATS = [torch.contiguous_format, torch.channels_last]
# The CUDA kernels run the same checks wherever a GPU is present.


@pytest.fixture(autouse=True, scope='module')
def _compiled_backend():
    """These tests are about the kernels: run them even where ``auto``
    would prefer PyTorch's CPU ops (small planes, channels_last)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MRLA_OPS_BACKEND', 'compiled')
        yield


def test_extension_is_built():
    assert ext_loader.load_ext() is not None, (
        'mrla_mm._ext is not built: run `make install` (or `pip install '
        '--no-build-isolation -e .`); error: ' + str(ext_loader._ext_error))


def _light_inputs(b, heads, d, h, w, dtype=torch.float64,
                  fmt=torch.contiguous_format, seed=0, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    c = heads * d

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = r(b, c, h, w).contiguous(memory_format=fmt)
    o = r(b, c, h, w).contiguous(memory_format=fmt)
    gate = torch.rand(b, heads, generator=g, dtype=dtype)
    return [t.to(device) for t in (x, r(c, 1, 3, 3), gate, r(c), o)]


def _base_inputs(b, heads, d, h, w, t, dtype=torch.float64,
                 fmt=torch.contiguous_format, seed=0, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    c = heads * d
    values = [
        torch.randn(b, c, h, w, generator=g,
                    dtype=dtype).contiguous(memory_format=fmt)
        for _ in range(t)
    ]
    weights = torch.softmax(
        torch.randn(b, heads, t, generator=g, dtype=dtype), -1)
    return weights.to(device), [v.to(device) for v in values]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('act', ['identity', 'gelu'])
def test_light_gradcheck(fmt, act, device):
    inputs = [
        t.requires_grad_()
        for t in _light_inputs(2, 2, 3, 4, 5, fmt=fmt, seed=1, device=device)
    ]

    def f(*a):
        return MRLALightCoreFunction.apply(*a, act)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fmt', FORMATS)
def test_light_nan_stays_in_its_window(fmt, device):
    """A NaN at a row's end or start reaches the outputs and gradients its
    3x3 window reaches in the composition, not the neighbouring row's far
    end (where the contiguous kernels' flat loops mask wrapped taps)."""
    x, wv, gate, lam, o = _light_inputs(1, 2, 2, 4, 5, fmt=fmt, seed=2,
                                        device=device)
    x[0, 0, 1, 4] = float('nan')
    x[0, 3, 2, 0] = float('nan')

    def run(fn):
        inputs = [t.detach().clone().requires_grad_()
                  for t in (x, wv, gate, lam, o)]
        out = fn(*inputs, 'identity')
        return [out, *torch.autograd.grad(out, inputs, torch.ones_like(out))]

    got = run(MRLALightCoreFunction.apply)
    want = run(mrla_light_core_pytorch)
    # Taps reading left of the NaN at the row's end never pair it with a
    # value gradient: only they of channel 0's weight gradient stay finite.
    assert want[2][0, 0, :, 0].isfinite().all()
    for g, w in zip(got, want):
        assert torch.equal(g.isnan(), w.isnan())
        assert torch.allclose(g.nan_to_num(), w.nan_to_num())


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('t', [1, 3])
def test_base_gradcheck(fmt, t, device):
    weights, values = _base_inputs(2, 2, 3, 3, 4, t, fmt=fmt, seed=2,
                                   device=device)
    inputs = [weights.requires_grad_()] + [v.requires_grad_() for v in values]
    assert torch.autograd.gradcheck(MRLABaseReadoutFunction.apply, inputs)
    assert torch.autograd.gradgradcheck(MRLABaseReadoutFunction.apply,
                                        inputs)


def _grads(out, inputs, grad):
    ins = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad(out, ins, grad)


def _rounding_errors(out, grads, inputs, grad_out, composition):
    """Largest error of a float32 op's output and input gradients against
    the float64 composition, each relative to the magnitude of the terms
    summed to produce it (the composition on absolute values).

    Gradients sum many products; where they cancel, two float32 results
    may differ far more than the result's own size, so each is measured
    against exact arithmetic on the scale float32 rounding works on.
    """
    def f64(ts, absolute):
        return [(t.detach().double().abs() if absolute else
                 t.detach().double()).requires_grad_() for t in ts]

    errs = []
    exact_in, scale_in = f64(inputs, False), f64(inputs, True)
    exact = composition(*exact_in)
    scale = composition(*scale_in)
    g = grad_out.detach().double()
    pairs = [(out, exact, scale)] + list(
        zip(grads, torch.autograd.grad(exact, exact_in, g),
            torch.autograd.grad(scale, scale_in, g.abs())))
    for a, e, sc in pairs:
        errs.append(((a.detach().double() - e).abs().max() /
                     sc.abs().max().clamp_min(1e-300)).item())
    return max(errs)


shapes = dict(
    b=st.integers(1, 3), heads=st.integers(1, 4), d=st.integers(1, 8),
    h=st.integers(1, 9), w=st.integers(1, 9), cl=st.booleans(),
    seed=st.integers(0, 2**16))


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=110, deadline=None)
@given(act=st.sampled_from(['identity', 'gelu']), fold=st.booleans(),
       add_input=st.booleans(), **shapes)
def test_light_compiled_matches_pytorch(device, b, heads, d, h, w, cl, seed,
                                        act, fold, add_input):
    fmt = torch.channels_last if cl else torch.contiguous_format
    x, wv, gate, lam, o = _light_inputs(b, heads, d, h, w, torch.float32,
                                        fmt, seed, device)
    c = heads * d
    scale, shift = (torch.randn(c, device=device),
                    torch.randn(c, device=device)) if fold else (None, None)
    with torch.no_grad():
        out = mrla_light_core(x, wv, gate, lam, o, act, scale=scale,
                              shift=shift, add_input=add_input)
        ref = mrla_light_core_pytorch(x, wv, gate, lam, o, act, scale,
                                      shift, add_input)
    assert out.is_contiguous(memory_format=fmt)
    assert rel_err(out, ref) < 1e-5
    inputs = [t.requires_grad_() for t in (x, wv, gate, lam, o)]
    out = MRLALightCoreFunction.apply(*inputs, act)
    grad = torch.randn_like(out)
    assert _rounding_errors(
        out, _grads(out, inputs, grad), inputs, grad,
        lambda *a: mrla_light_core_pytorch(*a, act)) < 1e-5


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=110, deadline=None)
@given(t=st.integers(1, 24), **shapes)
def test_base_compiled_matches_pytorch(device, b, heads, d, h, w, cl, seed,
                                       t):
    fmt = torch.channels_last if cl else torch.contiguous_format
    weights, values = _base_inputs(b, heads, d, h, w, t, torch.float32, fmt,
                                   seed, device)
    inputs = [weights.requires_grad_()] + [v.requires_grad_() for v in values]
    out = MRLABaseReadoutFunction.apply(*inputs)
    assert out.is_contiguous(memory_format=fmt)
    grad = torch.randn_like(out)
    assert _rounding_errors(
        out, _grads(out, inputs, grad), inputs, grad,
        lambda w, *v: mrla_math.base_combine(w, v)) < 1e-5


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fmt', FORMATS)
def test_base_backward_writes_only_wanted_gradients(fmt, device):
    """A value whose gradient is not wanted gets None and no write; the
    weights' gradient and the wanted ones are those of the full call."""
    weights, values = _base_inputs(2, 2, 4, 5, 3, 4, torch.float32, fmt,
                                   seed=5, device=device)
    grad = torch.randn_like(values[0])
    full_weights, full = readout_backward(grad, weights, values)
    assert all(g is not None for g in full)
    want = [False, True, False, True]
    part_weights, part = readout_backward(grad, weights, values, want)
    assert torch.equal(part_weights, full_weights)
    for s, (got, ref) in enumerate(zip(part, full)):
        if want[s]:
            assert torch.equal(got, ref)
            assert got.is_contiguous(memory_format=fmt)
        else:
            assert got is None
    # Through autograd: values that need no gradient get none written.
    inputs = [weights.requires_grad_()] + [
        v.requires_grad_(w) for v, w in zip(values, want)
    ]
    got = _grads(MRLABaseReadoutFunction.apply(*inputs), inputs, grad)
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    expected = _grads(mrla_math.base_combine(ref[0], ref[1:]), ref, grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 24), fold=st.booleans(), add_input=st.booleans(),
       **shapes)
def test_base_fused_inference_matches_pytorch(device, b, heads, d, h, w, cl,
                                              seed, t, fold, add_input):
    """Readout, folded eval norm + ReLU and residual add in one kernel."""
    fmt = torch.channels_last if cl else torch.contiguous_format
    c = heads * d
    _, values = _base_inputs(b, heads, d, h, w, t, torch.float32, fmt, seed,
                             device)
    q, keys = torch.randn(b, c, device=device), torch.randn(
        b, t, c, device=device)
    x = torch.randn_like(values[0])
    scale, shift = (torch.randn(c, device=device),
                    torch.randn(c, device=device)) if fold else (None, None)
    residual = x if add_input else None
    with torch.no_grad():
        out = mrla_base_readout(q, keys, values, heads, scale=scale,
                                shift=shift, residual=residual)
        ref = mrla_math.base_combine(
            mrla_math.base_weights(q, keys, heads), values)
        if fold:
            ref = torch.relu(ref * scale.view(1, c, 1, 1) +
                             shift.view(1, c, 1, 1))
        if add_input:
            ref = ref + x
    assert out.is_contiguous(memory_format=fmt)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       **shapes)
def test_residual_relu_pool_matches_pytorch(device, b, heads, d, h, w, cl,
                                            seed, dtype):
    fmt = torch.channels_last if cl else torch.contiguous_format
    g = torch.Generator().manual_seed(seed)
    r, i = [
        torch.randn(b, heads * d, h, w, generator=g).to(
            device, dtype).contiguous(memory_format=fmt) for _ in range(2)
    ]
    ref = torch.relu(r + i)
    out, mean = residual_relu_pool(r, i)
    assert out.is_contiguous(memory_format=fmt) and out.dtype == dtype
    # The add and the ReLU round as PyTorch's own ops do.
    assert torch.equal(out, ref)
    out_inplace, mean_inplace = residual_relu_pool(r, i, inplace=True)
    assert out_inplace.data_ptr() == r.data_ptr()
    assert torch.equal(r, ref) and torch.equal(mean_inplace, mean)
    ref_mean = ref.double().mean((2, 3))
    assert mean.dtype == dtype and mean.shape == (b, heads * d)
    assert rel_err(mean, ref_mean) < {
        torch.float32: 2e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2
    }[dtype]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.bfloat16])
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('inplace', [False, True])
def test_residual_relu_pool_gradients(device, dtype, fmt, inplace):
    """Gradients of the output and of the means in one pass: those of the
    PyTorch composition, rounded as it rounds them."""
    g = torch.Generator().manual_seed(3)
    r0, i, grad = [
        torch.randn(2, 40, 5, 7, generator=g).to(
            device, dtype).contiguous(memory_format=fmt) for _ in range(3)
    ]
    grad_mean = torch.randn(2, 40, generator=g).to(device, dtype)
    leaves = (r0.requires_grad_(), i.requires_grad_())

    def run(fn):
        # A non-leaf residual, as a norm's output, may be written over.
        out, mean = fn(r0 * 1, i)
        return out, mean, torch.autograd.grad((out, mean),
                                              leaves, (grad, grad_mean))

    out, mean, grads = run(
        lambda r, i: residual_relu_pool(r, i, inplace=inplace))
    ref_out, _, ref_grads = run(lambda r, i: (
        torch.relu(r + i), torch.relu(r + i).mean((2, 3))))
    assert torch.equal(out, ref_out)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype and got.is_contiguous(memory_format=fmt)
        assert torch.equal(got, want)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-6),
                                       (torch.float64, 1e-14),
                                       (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize('fmt', FORMATS)
def test_residual_relu_pool_folds_a_norm(device, dtype, tol, fmt,
                                         monkeypatch):
    """With ``scale`` and ``shift`` (an eval-mode norm of the residual
    branch): ``relu(residual * scale + shift + identity)`` in the op's one
    pass without autograd, the norm as its own op with autograd."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    g = torch.Generator().manual_seed(5)
    r, i = [
        torch.randn(2, 40, 5, 7, generator=g).to(
            device, dtype).contiguous(memory_format=fmt) for _ in range(2)
    ]
    scale = (torch.rand(40, generator=g) + 0.5).to(device)
    shift = torch.randn(40, generator=g).to(device)
    ref = torch.relu(
        mrla_math.channel_affine(r.double(), scale.double(), shift.double()) +
        i.double())
    with torch.no_grad():
        out, mean = residual_relu_pool(r.clone(), i, scale=scale,
                                       shift=shift)
        written = r.clone()
        out_inplace, _ = residual_relu_pool(written, i, inplace=True,
                                            scale=scale, shift=shift)
    assert out.is_contiguous(memory_format=fmt) and out.dtype == dtype
    assert rel_err(out, ref) < tol
    assert rel_err(mean, ref.mean((2, 3))) < tol
    assert out_inplace.data_ptr() == written.data_ptr()
    assert torch.equal(out_inplace, out)
    # With autograd the gradients are the composition's, to the norm's
    # parameters too.
    leaves = [t.double().requires_grad_() for t in (r, i, scale, shift)]
    grad = torch.randn(r.shape, generator=g, dtype=torch.float64)
    grad_mean = torch.randn(2, 40, generator=g, dtype=torch.float64)
    fused = residual_relu_pool(*leaves[:2], scale=leaves[2],
                               shift=leaves[3])
    want = torch.relu(
        mrla_math.channel_affine(leaves[0], leaves[2], leaves[3]) + leaves[1])
    got = torch.autograd.grad(fused, leaves, (grad, grad_mean))
    expected = torch.autograd.grad((want, want.mean((2, 3))), leaves,
                                   (grad, grad_mean))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_residual_relu_pool_gradcheck():
    r, i = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    assert torch.autograd.gradcheck(residual_relu_pool, (r, i))
    assert torch.autograd.gradgradcheck(residual_relu_pool, (r, i))
    nan = torch.full((1, 1, 2, 2), float('nan'))
    with torch.no_grad():
        out, mean = residual_relu_pool(nan, torch.zeros_like(nan))
    assert out.isnan().all() and mean.isnan().all()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,tol', [(torch.float16, 3e-3),
                                       (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize('fmt', FORMATS)
def test_half_precision_against_float32(dtype, tol, fmt, device):
    """Half-precision maps, float32 accumulation: within the rounding of
    the inputs and outputs, forward and backward."""
    x, wv, gate, lam, o = _light_inputs(2, 4, 8, 13, 11, torch.float32, fmt,
                                        device=device)
    lo = [t.to(dtype).requires_grad_() for t in (x, o)]
    hi = [t.float().detach().requires_grad_() for t in lo]
    out = MRLALightCoreFunction.apply(lo[0], wv, gate, lam, lo[1], 'gelu')
    ref = MRLALightCoreFunction.apply(hi[0], wv, gate, lam, hi[1], 'gelu')
    assert out.dtype == dtype and rel_err(out, ref) < tol
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, lo, g.to(dtype)),
                    torch.autograd.grad(ref, hi, g)):
        assert a.dtype == dtype and rel_err(a, r) < tol
    weights, values = _base_inputs(2, 4, 8, 13, 11, 6, torch.float32, fmt,
                                   device=device)
    lo = [v.to(dtype).requires_grad_() for v in values]
    hi = [v.float().detach().requires_grad_() for v in lo]
    out = MRLABaseReadoutFunction.apply(weights, *lo)
    ref = MRLABaseReadoutFunction.apply(weights, *hi)
    assert out.dtype == dtype and rel_err(out, ref) < tol
    for a, r in zip(torch.autograd.grad(out, lo, g.to(dtype)),
                    torch.autograd.grad(ref, hi, g)):
        assert rel_err(a, r) < tol


class _Ops(TorchDispatchMode):

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            self.names.append(str(func))
        return out


def test_dispatch_takes_compiled_path(monkeypatch):
    """With the extension no ATen op computes on the feature maps (no
    convolution, no multiply) but the kernels' output allocations;
    MRLA_OPS_BACKEND=pytorch brings the composition back."""
    x, wv, gate, lam, o = _light_inputs(1, 2, 4, 8, 8, torch.float32)
    weights, values = _base_inputs(1, 2, 4, 8, 8, 4, torch.float32)
    q, keys = torch.randn(1, 8), torch.randn(1, 4, 8)
    for backend, compiled in [('auto', True), ('compiled', True),
                              ('pytorch', False)]:
        monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
        with _Ops() as mode:
            mrla_light_core(x, wv, gate, lam, o)
            mrla_base_readout(q, keys, values, 2)
        convs = [n for n in mode.names if 'convolution' in n]
        muls = [n for n in mode.names if n.startswith(('aten.mul',
                                                       'aten.addcmul'))]
        assert (not convs and not muls) == compiled, mode.names


@pytest.mark.parametrize('case', ['channels_last', 'small'])
def test_auto_prefers_pytorch_where_it_is_faster(case, monkeypatch,
                                                 caplog):
    """auto leaves CPU channels_last maps and planes under 16 pixels to
    PyTorch (measured faster there) and says so once; compiled does not."""
    monkeypatch.setattr(ext_loader, '_logged', set())
    h, fmt = ((8, torch.channels_last) if case == 'channels_last' else
              (3, torch.contiguous_format))
    x, wv, gate, lam, o = _light_inputs(1, 2, 4, h, h, torch.float32, fmt)
    for backend, compiled in [('auto', False), ('compiled', True)]:
        monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
        with _Ops() as mode, caplog.at_level(logging.INFO,
                                             logger='mrla_mm.ops'):
            mrla_light_core(x, wv, gate, lam, o)
            mrla_light_core(x, wv, gate, lam, o)
        convs = [n for n in mode.names if 'convolution' in n]
        assert (not convs) == compiled, mode.names
    reason = ('channels_last maps run faster through PyTorch on the CPU'
              if case == 'channels_last' else
              'planes under 16 pixels run faster through PyTorch on the CPU')
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count(f'mrla_light_core: pure-PyTorch path, since {reason}'
                      ) == 1, msgs


def test_auto_prefers_pytorch_for_cuda_channels_last():
    """On CUDA, auto leaves channels_last maps to PyTorch for the ops whose
    kernels were measured slower there (the light core only with autograd),
    not the MRLA-base readout and the pooling op (faster); NCHW maps and CPU
    maps are not its concern. Fake tensors stand in for CUDA ones."""
    reason = 'channels_last maps run faster through PyTorch on CUDA'
    with FakeTensorMode():
        maps = {
            (dev, fmt): torch.empty(2, 8, 5, 5, device=dev).contiguous(
                memory_format=fmt)
            for dev in ('cpu', 'cuda') for fmt in FORMATS
        }
        cl = maps['cuda', torch.channels_last]
        slower = [
            op for op in ext_loader.OPS if ext_loader.ROUTES[
                op, 'cuda', torch.channels_last].path == ext_loader.PYTORCH
        ]
        assert slower == ['mrla_light_batch_norm', 'mrla_value_map',
                          'mrla_base_batch_norm']
        for op in slower:
            assert ext_loader.prefers_pytorch(op, (cl, )) == reason
            # CPU maps follow the CPU rows.
            assert ext_loader.prefers_pytorch(
                op, (maps['cpu', torch.contiguous_format], )) is None
            assert ext_loader.prefers_pytorch(
                op, (maps['cpu', torch.channels_last], )) == (
                    'channels_last maps run faster through PyTorch on the '
                    'CPU')
            # One channels_last map among the inputs is enough.
            assert ext_loader.prefers_pytorch(
                op, (maps['cuda', torch.contiguous_format], cl)) == reason
            assert ext_loader.prefers_pytorch(
                op, (maps['cuda', torch.contiguous_format], )) is None
        grad_cl = cl.clone().requires_grad_()
        for op in ('mrla_base_readout', 'residual_relu_pool'):
            for t in (cl, grad_cl):
                assert ext_loader.prefers_pytorch(op, (t, )) is None
        # The light core only when autograd records through its maps.
        assert ext_loader.prefers_pytorch('mrla_light_core', (cl, )) is None
        assert ext_loader.prefers_pytorch('mrla_light_core',
                                          (cl, grad_cl)) == reason
        with torch.no_grad():
            assert ext_loader.prefers_pytorch('mrla_light_core',
                                              (grad_cl, )) is None


def test_routes_cover_every_op_device_and_format():
    """The routing table has one row per op, device and memory format,
    each naming its path and the measurement it rests on."""
    want = {(op, dev, fmt)
            for op in ext_loader.OPS for dev in ('cpu', 'cuda')
            for fmt in FORMATS}
    assert set(ext_loader.ROUTES) == want
    for key, row in ext_loader.ROUTES.items():
        assert row.path in (ext_loader.COMPILED, ext_loader.PYTORCH,
                            ext_loader.COMPILED_WITHOUT_GRAD), key
        assert row.measured, key
    with pytest.raises(ValueError, match="no route for op 'mrla_heavy'"):
        ext_loader.route('mrla_heavy', torch.empty(1, 1, 4, 4))


def test_fallback_is_logged_once(monkeypatch, caplog):
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'auto')
    monkeypatch.setattr(ext_loader, '_ext', None)
    monkeypatch.setattr(ext_loader, '_ext_error', 'No module named x')
    monkeypatch.setattr(ext_loader, '_logged', set())
    x, wv, gate, lam, o = _light_inputs(1, 2, 4, 3, 3, torch.float32)
    with caplog.at_level(logging.INFO, logger='mrla_mm.ops'):
        for _ in range(3):
            out = mrla_light_core(x, wv, gate, lam, o)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ['mrla_light_core: pure-PyTorch path, since the '
                    'extension mrla_mm._ext is not built (No module named '
                    'x)']
    assert rel_err(out, mrla_light_core_pytorch(x, wv, gate, lam, o)) == 0
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    with pytest.raises(RuntimeError, match='MRLA_OPS_BACKEND=compiled but '
                       'the extension mrla_mm._ext is not built'):
        mrla_light_core(x, wv, gate, lam, o)
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'fast')
    with pytest.raises(ValueError, match=r"MRLA_OPS_BACKEND must be one of "
                       r"\('auto', 'pytorch', 'compiled'\), got 'fast'"):
        mrla_light_core(x, wv, gate, lam, o)


def test_bad_inputs_name_the_argument():
    ext = ext_loader.load_ext()
    x, wv, gate, lam, o = _light_inputs(1, 2, 4, 3, 3, torch.float32)
    w9, empty = wv.view(8, 9), torch.empty(0)
    with pytest.raises(RuntimeError, match=r'o_prev must have the shape of '
                       r'x \[1, 8, 3, 3\], got \[1, 8, 3, 2\]'):
        ext.mrla_light_forward(x, w9, gate, lam, o[..., :2], empty, empty, 0,
                               False)
    with pytest.raises(RuntimeError, match='gate must be .B, G. with G '
                       'dividing C=8'):
        ext.mrla_light_forward(x, w9, gate[:, :1].repeat(1, 3), lam, o,
                               empty, empty, 0, False)
    with pytest.raises(RuntimeError, match='weight must be Float for Float '
                       'maps, got Double'):
        ext.mrla_light_forward(x, w9.double(), gate, lam, o, empty, empty, 0,
                               False)
    with pytest.raises(RuntimeError, match='x must be contiguous or '
                       'channels_last'):
        ext.mrla_light_forward(x.transpose(2, 3), w9, gate, lam, o, empty,
                               empty, 0, False)
    weights, values = _base_inputs(1, 2, 4, 3, 3, 2, torch.float32)
    with pytest.raises(RuntimeError, match=r'want_values must have one entry '
                       r'per value \(2\), got 1'):
        ext.mrla_base_backward(x, weights, values, [True])
    with pytest.raises(RuntimeError, match=r'values\[1\] must have the '
                       r'shape of values\[0\] \[1, 8, 3, 3\], got '
                       r'\[1, 8, 3, 2\]'):
        ext.mrla_base_forward(weights, [values[0], values[1][..., :2]],
                              empty, empty, empty)
    with pytest.raises(RuntimeError, match=r'weights must be \[B, G, T\] = '
                       r'\[1, G, 3\]'):
        ext.mrla_base_forward(weights, values + values[:1], empty, empty,
                              empty)
    with pytest.raises(RuntimeError, match='scale must be a contiguous '
                       r'tensor of 8 elements, got shape \[4\]'):
        ext.mrla_base_forward(weights, values, lam[:4], lam, empty)
    with pytest.raises(RuntimeError, match=r'residual must have the shape of '
                       r'values\[0\] \[1, 8, 3, 3\], got \[1, 8, 3, 2\]'):
        ext.mrla_base_forward(weights, values, lam, lam, x[..., :2])
    with pytest.raises(RuntimeError, match='identity must have the shape of '
                       r'residual \[1, 8, 3, 3\], got \[1, 4, 3, 3\]'):
        ext.residual_relu_pool(x, o[:, :4], empty, empty, False)
    with pytest.raises(RuntimeError, match='shift must be a contiguous tensor '
                       r'of 8 elements, got shape \[4\]'):
        ext.residual_relu_pool(x, o, lam, lam[:4], False)
    with pytest.raises(RuntimeError, match='scale must be Float for Float '
                       'maps, got Double'):
        ext.residual_relu_pool(x, o, lam.double(), lam, False)
    with pytest.raises(ValueError, match='scale and shift must be given '
                       'together'):
        residual_relu_pool(x, o, scale=lam)
    with pytest.raises(ValueError, match='scale and shift must be given '
                       'together'):
        mrla_light_core(x, wv, gate, lam, o, scale=lam)


def test_unusual_strides_are_copied():
    """A map that is neither contiguous nor channels_last is copied once
    into a supported layout, with the same result."""
    x, wv, gate, lam, o = _light_inputs(2, 2, 4, 6, 5, torch.float32)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous() and not xt.is_contiguous(
        memory_format=torch.channels_last)
    ref = mrla_light_core_pytorch(x, wv, gate, lam, o)
    assert rel_err(MRLALightCoreFunction.apply(xt, wv, gate, lam, o,
                                               'identity'), ref) < 1e-6


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('act', ['identity', 'gelu'])
def test_value_map(fmt, act):
    """The compiled value map is mrla_math.mrla_value, with gradients."""
    x, wv = [
        t.requires_grad_()
        for t in _light_inputs(2, 2, 3, 4, 5, fmt=fmt, seed=3)[:2]
    ]
    f = functools.partial(MRLAValueFunction.apply, value_act=act)
    assert torch.autograd.gradcheck(f, (x, wv))
    assert torch.autograd.gradgradcheck(f, (x, wv))
    x32, w32 = x.detach().float(), wv.detach().float()
    out = mrla_value_map(x32, w32, act)
    assert out.is_contiguous(memory_format=fmt)
    assert rel_err(out, mrla_math.mrla_value(x32, w32, act)) < 1e-6

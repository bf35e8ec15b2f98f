import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from mrla_mm.models import (
    MRLABase,
    MRLACache,
    MRLALight,
    MRLAResNet,
    build_mrla_layer,
)
from mrla_mm.ops import adaptive_kernel_size, channel_conv1d, query_key
import mrla_reference as R
from conftest import rel_err


@pytest.mark.parametrize('channels,k', [(192, 5), (256, 5), (384, 5),
                                        (512, 5), (768, 5), (1024, 5),
                                        (2048, 7), (64, 3)])
def test_adaptive_kernel_size(channels, k):
    assert adaptive_kernel_size(channels) == k
    assert MRLALight(channels, dim_per_head=32).kernel_size == k


@pytest.mark.parametrize('channels,k', [(1, 3), (3, 5), (64, 3), (257, 7)])
def test_channel_conv1d_is_a_zero_padded_conv1d(channels, k):
    y = torch.randn(3, channels, dtype=torch.float64, requires_grad=True)
    wq, wk = (torch.randn(1, 1, k, dtype=torch.float64, requires_grad=True)
              for _ in range(2))
    expected = [
        nn.functional.conv1d(y[:, None], w, padding=k // 2)[:, 0]
        for w in (wq, wk)
    ]
    assert torch.allclose(channel_conv1d(y, wq), expected[0], atol=1e-14)
    q, key = query_key(y, wq, wk)
    assert torch.allclose(q, expected[0], atol=1e-14)
    assert torch.allclose(key, expected[1], atol=1e-14)
    assert torch.autograd.gradcheck(query_key, (y, wq, wk))


@pytest.mark.parametrize('cls', [MRLALight, MRLABase])
def test_heads(cls):
    layer = cls(256, num_heads=8)
    assert (layer.num_heads, layer.dim_per_head) == (8, 32)
    layer = cls(256, dim_per_head=16)
    assert (layer.num_heads, layer.dim_per_head) == (16, 16)


@pytest.mark.parametrize('cls', [MRLALight, MRLABase])
@pytest.mark.parametrize('kwargs,match', [
    (dict(channels=100, dim_per_head=32), r'dim_per_head=32 does not divide '
     r'channels=100'),
    (dict(channels=96, num_heads=5), r'num_heads=5 does not divide'),
    (dict(channels=96), r'exactly one of dim_per_head and num_heads'),
    (dict(channels=96, num_heads=3, dim_per_head=32), r'exactly one of'),
    (dict(channels=96, num_heads=0), r'num_heads must be a positive int'),
    (dict(channels=96, num_heads=3, kernel_size=4), r'kernel_size must be a '
     r'positive odd int or None .*got 4'),
    (dict(channels=96, num_heads=3, kernel_size=-1), r'got -1'),
    (dict(channels=96, num_heads=3, kernel_size=3.0), r'got 3.0'),
    (dict(channels=96, num_heads=3, value_act='relu'), r"value_act must be "
     r"one of \('identity', 'gelu'\), got 'relu'"),
    (dict(channels=64, num_heads=2, kernel_size=999), r'kernel_size=999 is '
     r'too large for channels=64: allowed are odd sizes up to 2 \* channels '
     r'- 1 = 127'),
    (dict(channels=4, num_heads=2, kernel_size=9), r'up to .* = 7'),
])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize('cls,kwargs,match', [
    (MRLALight, dict(lambda_init='a'), r"lambda_init must be a finite number "
     r"or None, got 'a'"),
    (MRLALight, dict(lambda_init=float('nan')), r'got nan'),
    (MRLALight, dict(lambda_init=True), r'got True'),
    (MRLABase, dict(detach_cache='yes'), r"detach_cache must be True or "
     r"False, got 'yes'"),
    (MRLABase, dict(recompute_values=1), r'recompute_values must be True or '
     r'False, got 1'),
])
def test_bad_values(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(64, num_heads=2, **kwargs)


def test_widest_kernel_and_constant_lambda():
    light = MRLALight(64, num_heads=2, kernel_size=127, lambda_init=0.5)
    assert light.query_conv.weight.shape[-1] == 127
    assert torch.equal(light.lambda_t.detach(), torch.full((64, ), 0.5))


def test_bad_inputs():
    light = MRLALight(64, num_heads=4)
    x = torch.rand(2, 64, 5, 5)
    with pytest.raises(ValueError, match=r'x must be a 4-D .*rank 3'):
        light(x[0], x[0])
    with pytest.raises(ValueError, match=r'x must have 64 channels.*'
                       r'\(2, 32, 5, 5\)'):
        light(x[:, :32], x[:, :32])
    with pytest.raises(ValueError, match=r'o_prev must have the shape of x'):
        light(x, x[:, :, :4])
    base = MRLABase(64, num_heads=4)
    with pytest.raises(TypeError, match='cache must be an MRLACache'):
        base(x, [])
    cache = base.new_cache()
    base(x, cache)
    with pytest.raises(ValueError, match='one shape'):
        base(torch.rand(2, 64, 3, 3), cache)


@pytest.mark.parametrize('cfg,err,match', [
    (dict(type='MRLAHeavy'), ValueError, r"mrla_cfg\['type'\] must be one of "
     r"\('MRLALight', 'MRLABase'\), got 'MRLAHeavy'"),
    (dict(dim_per_head=8), TypeError, r'"type" key'),
    ('MRLALight', TypeError, r'"type" key'),
    (dict(type='MRLALight', channels=8), ValueError, r"must not set "
     r"'channels'"),
])
def test_bad_mrla_cfg(cfg, err, match):
    with pytest.raises(err, match=match):
        build_mrla_layer(cfg, 64)
    with pytest.raises(err, match=match):
        MRLAResNet(18, mrla_cfg=cfg)


def test_build_defaults_and_classes():
    layer = build_mrla_layer(dict(type='MRLABase'), 256, dict(MRLABase=16))
    assert isinstance(layer, MRLABase) and layer.dim_per_head == 16
    layer = build_mrla_layer(dict(type=MRLALight, num_heads=2), 256,
                             dict(MRLALight=32))
    assert isinstance(layer, MRLALight) and layer.num_heads == 2
    assert build_mrla_layer(None, 64) is None


def _light_ref(layer, x, o_prev):
    return R.light_layer(x.double(), o_prev.double(),
                         layer.query_conv.weight.double(),
                         layer.key_conv.weight.double(),
                         layer.value_conv.weight.double(),
                         layer.lambda_t.double(), layer.dim_per_head,
                         gelu=layer.value_act == 'gelu')


@pytest.mark.parametrize('value_act', ['identity', 'gelu'])
@pytest.mark.parametrize('shape,d', [((3, 64, 7, 9), 16), ((2, 96, 1, 1), 32),
                                     ((1, 256, 4, 3), 32)])
def test_light_matches_reference(shape, d, value_act):
    layer = MRLALight(shape[1], dim_per_head=d, value_act=value_act)
    x, o_prev = torch.randn(shape), torch.randn(shape)
    assert rel_err(layer(x, o_prev), _light_ref(layer, x, o_prev)) < 1e-6
    layer.double()
    assert rel_err(layer(x.double(), o_prev.double()),
                   _light_ref(layer, x, o_prev)) < 1e-13


def test_light_gradcheck(one_thread):
    layer = MRLALight(32, num_heads=4, value_act='gelu').double()
    x = torch.randn(2, 32, 4, 5, dtype=torch.float64, requires_grad=True)
    o = torch.randn(2, 32, 4, 5, dtype=torch.float64, requires_grad=True)
    params = [layer.query_conv.weight, layer.value_conv.weight,
              layer.lambda_t]

    def f(x, o, wq, wv, lam):
        ref = R.light_layer(x, o, wq, layer.key_conv.weight, wv, lam, 8,
                            gelu=True)
        return layer(x, o), ref

    assert torch.autograd.gradcheck(lambda *a: f(*a)[0], (x, o, *params))
    # Same gradients as the independent reference, parameters included.
    g = torch.randn(2, 32, 4, 5, dtype=torch.float64)
    ours, ref = f(x, o, *params)
    ga = torch.autograd.grad(ours, (x, o, *params), g)
    gb = torch.autograd.grad(ref, (x, o, *params), g)
    for a, b in zip(ga, gb):
        assert rel_err(a, b) < 1e-12


def _run_base_chain(layers, xs, dtype):
    cache = layers[0].new_cache()
    return [layer.to(dtype)(x.to(dtype), cache)
            for layer, x in zip(layers, xs)], cache


@pytest.mark.parametrize('shape,d,t', [((2, 64, 6, 5), 16, 5),
                                       ((3, 32, 1, 1), 8, 3),
                                       ((1, 128, 3, 7), 16, 9)])
def test_base_matches_reference(shape, d, t):
    layers = [MRLABase(shape[1], dim_per_head=d) for _ in range(t)]
    xs = [torch.randn(shape) for _ in range(t)]
    history, refs = [], []
    for layer, x in zip(layers, xs):
        refs.append(
            R.base_layer(x.double(), history,
                         layer.query_conv.weight.double(),
                         layer.key_conv.weight.double(),
                         layer.value_conv.weight.double(), d))
    outs, cache = _run_base_chain(layers, xs, torch.float32)
    assert len(cache) == t
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) < 1e-6
    # The first layer of a group attends to itself only: its output is V.
    assert rel_err(outs[0], cache.values[0]) == 0
    outs, _ = _run_base_chain(layers, xs, torch.float64)
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) < 1e-13


def test_base_gradients_through_cache():
    d, t = 8, 4
    layers = [MRLABase(32, dim_per_head=d).double() for _ in range(t)]
    xs = [
        torch.randn(2, 32, 3, 4, dtype=torch.float64, requires_grad=True)
        for _ in range(t)
    ]
    outs, _ = _run_base_chain(layers, xs, torch.float64)
    history, refs = [], []
    for layer, x in zip(layers, xs):
        refs.append(
            R.base_layer(x, history, layer.query_conv.weight,
                         layer.key_conv.weight, layer.value_conv.weight, d))
    params = [p for layer in layers for p in layer.parameters()]
    ga = torch.autograd.grad(sum((o * o).sum() for o in outs), xs + params)
    gb = torch.autograd.grad(sum((o * o).sum() for o in refs), xs + params)
    for a, b in zip(ga, gb):
        assert rel_err(a, b) < 1e-12
    # The first layer's query gets no gradient (one-entry softmax), but
    # its key serves the later layers.
    wq0, wk0 = torch.autograd.grad(
        sum((o * o).sum() for o in _run_base_chain(layers, xs,
                                                   torch.float64)[0]),
        [layers[0].query_conv.weight, layers[0].key_conv.weight])
    assert wq0.abs().max() == 0 and wk0.abs().max() > 0


@pytest.mark.parametrize('with_norm', [False, True])
def test_base_detached_cache(with_norm):
    """With ``detach_cache`` no gradient reaches an earlier layer through
    the cache, and each layer's own key and value still train: the
    gradients of the reference with the earlier keys and values detached
    by hand."""
    d, t = 8, 3
    torch.manual_seed(0)
    layers = [MRLABase(32, dim_per_head=d, detach_cache=True).double()
              for _ in range(t)]
    norms = [nn.BatchNorm2d(32).double() for _ in range(t)]
    xs = [torch.randn(2, 32, 3, 4, dtype=torch.float64, requires_grad=True)
          for _ in range(t)]
    cache = layers[0].new_cache()
    outs = [
        layer(x, cache, norm=bn if with_norm else None)
        for layer, x, bn in zip(layers, xs, norms)
    ]
    assert torch.autograd.grad(outs[1].sum(), xs[0],
                               allow_unused=True)[0] is None
    history, refs = [], []
    for layer, x, bn in zip(layers, xs, norms):
        history = [(k.detach(), v.detach()) for k, v in history]
        o = R.base_layer(x, history, layer.query_conv.weight,
                         layer.key_conv.weight, layer.value_conv.weight, d)
        refs.append(x + torch.relu(bn(o)) if with_norm else o)
    params = [p for layer in layers for p in layer.parameters()]
    got = torch.autograd.grad(sum(o.square().sum() for o in outs),
                              xs + params)
    want = torch.autograd.grad(sum(o.square().sum() for o in refs),
                               xs + params)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12
    # Every layer's value convolution trains, and the key convolutions of
    # the layers after the first (whose own key meets a one-entry softmax).
    assert all(g.abs().max() > 0 for g in got[t + 2::3])
    assert all(g.abs().max() > 0 for g in got[t + 4::3])


class _LargestOutput(TorchDispatchMode):

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_base_cache_reads_values_in_place():
    """No op of a base layer makes a tensor larger than one feature map:
    the cache is never concatenated, whatever its length."""
    t, shape = 12, (2, 64, 8, 8)
    layers = [MRLABase(64, dim_per_head=16) for _ in range(t)]
    cache = layers[0].new_cache()
    with torch.no_grad():
        for layer in layers[:-1]:
            layer(torch.randn(shape), cache)
        first = cache.values[0]
        with _LargestOutput() as mode:
            layers[-1](torch.randn(shape), cache)
    assert mode.largest == torch.Size(shape).numel()
    assert cache.values[0] is first and len(cache) == t


def test_cache_api():
    cache = MRLACache()
    assert len(cache) == 0
    kernel = torch.zeros(4, 1, 3, 3)
    cache.append(torch.zeros(2, 4), torch.zeros(2, 4, 3, 3),
                 torch.zeros(2, 4, 3, 3), kernel)
    cache.append(torch.ones(2, 4), torch.ones(2, 4, 3, 3),
                 torch.ones(2, 4, 3, 3), kernel)
    assert cache.stacked_keys().shape == (2, 2, 4)

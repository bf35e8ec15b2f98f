"""``relu(batch_norm(x) + identity)`` that rebuilds its output in the
backward, :class:`RecomputedMaps`, and the blocks that use them
(``mrla_recompute_input``)."""
import warnings
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.profiler import ProfilerActivity, profile

import mrla_mm.ops.batch_norm_add_relu as bar
from mrla_mm.models import MRLAClsResNet, MRLAResNet
from mrla_mm.models.layers import MRLACache
from mrla_mm.ops.batch_norm_add_relu import (
    BatchNormAddReLURecipe,
    RecomputedMaps,
    _block_end,
    batch_norm_add_relu,
)
from mrla_mm.ops.batch_norm_stats import advance_batch_norm
from mrla_mm.ops.mrla_base import RELEASE_CHUNK
from conftest import rel_err
from devices import DEVICES

LIGHT, BASE = dict(type='MRLALight'), dict(type='MRLABase')


def _norms(c, dtype, training, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = nn.BatchNorm2d(c).to(dtype)
    a.weight.data = torch.rand(c, generator=g, dtype=dtype) + 0.5
    a.bias.data = torch.randn(c, generator=g, dtype=dtype)
    a.running_mean.normal_(generator=g)
    a.running_var.uniform_(0.5, 2, generator=g)
    b = nn.BatchNorm2d(c).to(dtype)
    b.load_state_dict(a.state_dict())
    return a.train(training), b.train(training)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('channels_last', [False, True])
def test_matches_the_modules(device, dtype, training, channels_last):
    """Output, gradients and the running statistics are the BatchNorm
    module's, followed by the add and the ReLU."""
    module, fused = (n.to(device) for n in _norms(6, dtype, training))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, 5, 7, dtype=dtype, device=device).to(
        memory_format=fmt)
    identity = torch.randn(3, 6, 5, 7, dtype=dtype, device=device)
    x.requires_grad_()
    identity.requires_grad_()
    ref = torch.relu(module(x) + identity)
    out = batch_norm_add_relu(x, identity, **advance_batch_norm(fused))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel_err(out, ref) < tol
    grad = torch.randn_like(ref)
    inputs = [x, identity]
    want = torch.autograd.grad(ref, inputs + list(module.parameters()), grad)
    got = torch.autograd.grad(out, inputs + list(fused.parameters()), grad)
    for name, g, w in zip(['x', 'identity', 'weight', 'bias'], got, want):
        assert rel_err(g, w) < 10 * tol, name
    for name in ('running_mean', 'running_var'):
        assert rel_err(getattr(fused, name), getattr(module, name)) < tol
    assert fused.num_batches_tracked == module.num_batches_tracked


@pytest.mark.parametrize('dtype',
                         [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_block_end_is_the_add_and_the_relu(dtype, channels_last):
    """The map, computed with ATen's fused add and ReLU where it serves
    (float32/64 on the CPU), has the bits of the norm's output plus the
    shortcut, then the ReLU."""
    g = torch.Generator().manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, identity = (torch.randn(2, 5, 9, 7, generator=g).to(dtype).to(
        memory_format=fmt) for _ in range(2))
    # Half-precision maps have float32 norm vectors, as under autocast.
    vec = torch.float32 if dtype == torch.bfloat16 else dtype
    weight, bias, mean = (torch.randn(5, generator=g).to(vec)
                          for _ in range(3))
    var = torch.rand(5, generator=g).to(vec) + 0.5
    out = _block_end(x, identity, weight, bias, mean, var, 1e-5)
    want = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.,
                                   1e-5)[0]
    want = (want + identity).relu()
    assert out.dtype == dtype and torch.equal(out, want)
    assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_and_double_backward(training, one_thread):
    module, _ = _norms(3, torch.float64, training)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    identity = torch.randn(2, 3, 3, 4, dtype=torch.float64,
                           requires_grad=True)
    weight = module.weight.detach().clone().requires_grad_()
    bias = module.bias.detach().clone().requires_grad_()
    rm, rv = module.running_mean.clone(), module.running_var.clone()

    def fn(x, identity, weight, bias):
        return batch_norm_add_relu(
            x, identity, running_mean=rm.clone(), running_var=rv.clone(),
            weight=weight, bias=bias, training=training)

    assert gradcheck(fn, (x, identity, weight, bias))
    assert gradgradcheck(fn, (x, identity, weight, bias))


def test_bad_input_is_named():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r'x must be a 4-D \[B, C, H, W\]'):
        batch_norm_add_relu(x[0], x[0], running_mean=None,
                            running_var=None, training=True)
    with pytest.raises(ValueError, match='identity must have the shape'):
        batch_norm_add_relu(x, x[:1], running_mean=None, running_var=None,
                            training=True)
    with pytest.raises(ValueError, match='running_mean and running_var'):
        batch_norm_add_relu(x, x, running_mean=None, running_var=None)
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        batch_norm_add_relu(x[:1, :, :1, :1], x[:1, :, :1, :1],
                            running_mean=None, running_var=None,
                            training=True)


def test_recomputed_maps_save_the_recipe():
    """An op that saves a registered map keeps its recipe and gets the map
    rebuilt, bit for bit, in the backward; a map changed in place after it
    was registered, or one never registered, is saved as it is."""
    _, norm = _norms(4, torch.float32, True)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    identity = torch.randn(2, 4, 6, 6)
    kernel = torch.randn(4, 1, 3, 3, requires_grad=True)
    with RecomputedMaps() as maps:
        o = batch_norm_add_relu(x, identity, maps=maps,
                                **advance_batch_norm(norm))
        recipe = RecomputedMaps.recipe_of(o)
        y = F.conv2d(o, kernel, padding=1, groups=4)
        plain = x * 2
        z = F.conv2d(plain, kernel, padding=1, groups=4)
        changed = batch_norm_add_relu(x, identity, maps=maps,
                                      **advance_batch_norm(norm))
        changed.mul_(2)
        w = F.conv2d(changed, kernel, padding=1, groups=4)
    assert isinstance(recipe, BatchNormAddReLURecipe)
    assert RecomputedMaps.recipe_of(o) is None  # none active any more
    rebuilt = y.grad_fn._saved_input
    assert rebuilt.data_ptr() != o.data_ptr()
    assert torch.equal(rebuilt, o)
    # The rebuilt map is held for the op's own backward (the ReLU's mask),
    # which lets it go.
    assert o.grad_fn.kept.data_ptr() == rebuilt.data_ptr()
    assert z.grad_fn._saved_input.data_ptr() == plain.data_ptr()
    assert w.grad_fn._saved_input.data_ptr() == changed.data_ptr()
    # The rebuilt map gives the gradients the stored one gives.
    grads = torch.autograd.grad(y.square().sum(), [x, kernel])
    o2 = torch.relu(norm.train()(x) + identity)
    want = torch.autograd.grad(
        F.conv2d(o2, kernel, padding=1, groups=4).square().sum(), [x, kernel])
    for g, ref in zip(grads, want):
        assert rel_err(g, ref) < 1e-5
    assert o.grad_fn.kept is None


def test_held_recipes_hold_no_map():
    """An MRLA-base cache holds a rebuildable source as its recipe, so the
    map goes with its block; and a recipe held past its op's backward does
    not keep the op's input alive (it reads it from the op's saved
    tensors, which that backward lets go)."""
    _, norm = _norms(4, torch.float32, True)
    w = torch.randn(4, 4, 1, 1, requires_grad=True)
    identity = torch.randn(2, 4, 6, 6)
    kernel = torch.randn(4, 1, 3, 3)
    cache = MRLACache()
    with RecomputedMaps() as maps:
        conv = F.conv2d(torch.randn(2, 4, 6, 6), w)
        o = batch_norm_add_relu(conv, identity, maps=maps,
                                **advance_batch_norm(norm))
        cache.append(o.mean((2, 3)), o * 2, o, kernel)
    recipe = cache.sources[0]
    assert isinstance(recipe, BatchNormAddReLURecipe)
    assert torch.equal(recipe.compute(), o)
    loss, conv_ref, o_ref = o.sum(), weakref.ref(conv), weakref.ref(o)
    del o, conv
    # The forward's other holders of o are gone: only the cache's recipe
    # and the graph are left, and neither holds o.
    assert o_ref() is None
    loss.backward()
    assert conv_ref() is None
    assert cache.sources[0] is recipe


def _same_models(cls, depth, cfg, **kwargs):
    torch.manual_seed(2)
    a = cls(depth, mrla_cfg=cfg, out_indices=(0, 1, 2, 3),
            mrla_recompute_input=False, **kwargs)
    for p in a.parameters():
        p.data.normal_(0, 0.5)
    b = cls(depth, mrla_cfg=cfg, out_indices=(0, 1, 2, 3),
            mrla_recompute_input=True, **kwargs)
    b.load_state_dict(a.state_dict())
    for model in (a, b):
        # mmdet's ResNet.train() returns None.
        model.double().train()
    return a, b


DET = (MRLAResNet, dict(norm_eval=False))
CLS = (MRLAClsResNet, {})


@pytest.mark.parametrize('host,depth,cfg,backend', [
    (DET, 50, LIGHT, 'auto'), (DET, 50, BASE, 'auto'),
    (DET, 50, LIGHT, 'pytorch'), (DET, 50, BASE, 'pytorch'),
    (CLS, 50, LIGHT, 'auto'), (CLS, 18, BASE, 'auto')])
def test_blocks_recomputing_their_input_are_the_same_model(
        host, depth, cfg, backend, monkeypatch):
    """Outputs, gradients and running statistics do not change; the blocks
    hold less at the end of the forward, one map of each block's width."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
    a, b = _same_models(host[0], depth, cfg, **host[1])
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    held = []
    for model in (a, b):
        outs, nbytes = _forward_holding(model, x)
        held.append(nbytes)
        sum((o * o.cos()).sum() for o in outs).backward()
        model.outs = [o.detach() for o in outs]
    for oa, ob in zip(a.outs, b.outs):
        assert rel_err(ob, oa) < 1e-12
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert rel_err(pb.grad, pa.grad) < 1e-10, n
    for (n, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert rel_err(bb, ba) < 1e-12, n
    # One map per block, float64, batch 2: stage 1 at 16 x 16, each later
    # stage twice the channels at a quarter of the pixels.
    width = 256 if depth == 50 else 64
    per_stage = [2 * 8 * width * 256 // 2**i for i in range(4)]
    blocks = (3, 4, 6, 3) if depth == 50 else (2, 2, 2, 2)
    saved = sum(n * m for n, m in zip(blocks, per_stage))
    if cfg is BASE:
        # The first block of each stage now keeps its downsampled shortcut
        # to rebuild ``o`` (MRLA-light's branch keeps it anyway).
        saved -= sum(per_stage)
    assert held[0] - held[1] >= 0.95 * saved


def test_base_step_rebuilds_each_input_once_per_read(monkeypatch):
    """MRLA-base with its input rebuilt: each block's input is built once
    in the forward, and in the backward once per chunk of values a layer
    recomputes (for its readout, then but for the last chunk for the
    readout's gradients), except that a layer keeps its own block's input
    and the previous block's: its block's value map and block end and the
    previous layer take that one instead of building their own."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    builds = []
    monkeypatch.setattr(
        bar, '_block_end',
        lambda *args, end=bar._block_end: builds.append(1) or end(*args))
    torch.manual_seed(0)
    model = MRLAResNet(50, mrla_cfg=BASE, norm_eval=False, out_indices=(3, ))
    model.train()
    out = model(torch.rand(1, 3, 64, 64))[0]
    assert len(builds) == 16
    out.sum().backward()

    def rebuilt(t, n):
        """Builds in the backward of layer ``t`` of a stage of ``n``."""
        # The readout's values: the layer's own input was kept by the next
        # layer (but in the stage's last).
        readout = t + 1 - (t < n - 1)
        # Its gradients: the chunks but the last, without the previous
        # layer's input (kept for the readout).
        first = RELEASE_CHUNK * (t // RELEASE_CHUNK)
        return readout + first - (0 < t <= first)

    blocks = (3, 4, 6, 3)
    assert len(builds) - 16 == sum(
        rebuilt(t, n) for n in blocks for t in range(n))


def _forward_holding(model, x):
    """The outputs of ``model(x)`` and the bytes the forward left allocated
    (what the backward holds, and the outputs), from the profiler's
    allocation events."""
    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        outs = model(x)
    held = sum(e.nbytes() for e in prof.profiler.kineto_results.events()
               if e.name() == '[memory]')
    return outs, held


@pytest.mark.parametrize('kwargs,reason', [
    (dict(with_cp=True), 'with_cp=True'),
    (dict(norm_cfg=dict(type='GN', num_groups=8)), 'GroupNorm, not a'),
    (dict(norm_cfg=dict(type='SyncBN')), 'SyncBatchNorm'),
    (dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                        position='after_conv3')]), 'plugin or drop path'),
])
def test_says_when_recompute_input_cannot_act(kwargs, reason):
    with pytest.warns(UserWarning, match=reason):
        MRLAResNet(50, mrla_recompute_input=True, **kwargs)


@pytest.mark.parametrize('host', [MRLAResNet, MRLAClsResNet])
def test_recompute_input_is_on_by_default_for_base_only(host):
    """None (the default) turns it on for MRLA-base and off for
    MRLA-light, and where it cannot act says nothing (the user did not
    ask); an explicit value holds for either."""
    def flags(**kwargs):
        model = host(18, **kwargs)
        return {
            block.mrla_recompute_input
            for layer in (model.layer1, model.layer4) for block in layer
        }

    assert flags(mrla_cfg=BASE) == {True}
    assert flags(mrla_cfg=LIGHT) == {False}
    assert flags(mrla_cfg=BASE, mrla_recompute_input=False) == {False}
    assert flags(mrla_cfg=LIGHT, mrla_recompute_input=True) == {True}
    assert flags(mrla_cfg=None) == {False}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        flags(mrla_cfg=BASE, with_cp=True)


def test_mmpretrain_drop_path_keeps_the_input_stored():
    with pytest.warns(UserWarning, match='plugin or drop path'):
        MRLAClsResNet(50, mrla_recompute_input=True, drop_path_rate=0.1)

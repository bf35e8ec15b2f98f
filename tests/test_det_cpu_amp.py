"""CPUAmpOptimWrapper and enable_amp: bfloat16 where autocast covers it."""
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from torch import nn

from mrla_mm.engine import CPUAmpOptimWrapper, enable_amp


class TinyDetector(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.neck = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))


def _dtypes(model, x, wrapper=None):
    """Output dtype of each conv (inside the module) and at its boundary."""
    seen = {}
    handles = [
        m.register_forward_hook(
            lambda m, a, o, n=n: seen.__setitem__(n, o.dtype))
        for n, m in model.named_children()
    ]
    if wrapper is None:
        out = model(x)
    else:
        with wrapper.optim_context(model):
            out = model(x)
    for h in handles:
        h.remove()
    return seen, out


def test_autocast_covers_backbone_and_neck_only():
    model = TinyDetector()
    wrapper = CPUAmpOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.rand(2, 3, 8, 8)
    seen, out = _dtypes(model, x, wrapper)
    # _dtypes' hooks run before the wrapper's (registered later, on first
    # use), so they see what each conv computed.
    assert seen == dict(backbone=torch.bfloat16, neck=torch.bfloat16,
                        head=torch.float32)
    assert out.dtype == torch.float32
    wrapper.backward(out.square().mean())
    assert all(p.dtype == p.grad.dtype == torch.float32
               and torch.isfinite(p.grad).all() for p in model.parameters())
    # Outside optim_context (validation, testing) everything is float32.
    seen, _ = _dtypes(model, x)
    assert set(seen.values()) == {torch.float32}


class TinyClassifier(nn.Module):
    """An mmpretrain ViT classifier's layout: no neck."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_default_autocast_skips_a_missing_neck():
    model = TinyClassifier()
    wrapper = CPUAmpOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    seen, out = _dtypes(model, torch.rand(2, 3, 8, 8), wrapper)
    assert seen == dict(backbone=torch.bfloat16, head=torch.float32)
    assert out.dtype == torch.float32
    # Named explicitly, a missing neck is an error.
    named = CPUAmpOptimWrapper(
        autocast_modules=('backbone', 'neck'),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="names 'neck'"):
        with named.optim_context(model):
            pass


def test_bf16_result_close_to_fp32():
    model = TinyDetector()
    wrapper = CPUAmpOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.rand(2, 3, 8, 8)
    ref = model(x)
    with wrapper.optim_context(model):
        out = model(x)
    assert not torch.equal(out, ref)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)


def test_bad_arguments():
    model = TinyDetector()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="got 'float16'"):
        CPUAmpOptimWrapper(dtype='float16', optimizer=opt)
    wrapper = CPUAmpOptimWrapper(autocast_modules=('rpn',), optimizer=opt)
    with pytest.raises(ValueError, match="names 'rpn'.*'backbone'"):
        with wrapper.optim_context(model):
            pass


def test_enable_amp_on_cpu():
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1),
        loss_scale=512.)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert 'loss_scale' not in cfg.optim_wrapper
    assert any('loss_scale=512.0 is not used' in str(w.message)
               for w in caught)
    custom = Config(dict(optim_wrapper=dict(type='MyWrapper')))
    with pytest.raises(ValueError, match="got 'MyWrapper'"):
        enable_amp(custom)


def test_plain_wrapper_is_unchanged_without_amp():
    model = TinyDetector()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    seen, _ = _dtypes(model, torch.rand(1, 3, 8, 8), wrapper)
    assert set(seen.values()) == {torch.float32}

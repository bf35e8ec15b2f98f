"""MRLAResNet as a drop-in for mmdet's ResNet: the backbone-level cases of
mmdet 3.3's own ResNet tests (``tests/test_models/test_backbones/
test_resnet.py``: ``test_resnest_stem`` and ``test_resnet_backbone``), with
``ResNet`` replaced by ``MRLAResNet`` and ``ResNetV1d`` by ``MRLAResNet``
with ``deep_stem`` and ``avg_down``, for both MRLA types.

Many of these cases use narrow backbones (``base_channels`` 1 to 8, so
stages 4 to 256 channels wide), where the paper's ``dim_per_head`` (32
light, 16 base) does not divide every stage: the default heads must adapt.
"""
import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck
from torch.nn import GroupNorm
from torch.nn.modules.batchnorm import _BatchNorm

from mrla_mm.models import MRLABase, MRLALight, MRLAResNet
from mrla_mm.models.layers import builder

MRLA_CFGS = [dict(type='MRLALight'), dict(type='MRLABase')]
IDS = ['light', 'base']


def resnet(mrla_cfg, depth=50, **kwargs):
    return MRLAResNet(depth, mrla_cfg=mrla_cfg, **kwargs)


def resnet_v1d(mrla_cfg, depth=50, **kwargs):
    return MRLAResNet(
        depth, mrla_cfg=mrla_cfg, deep_stem=True, avg_down=True, **kwargs)


def blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock,
                                                          Bottleneck))]


def norms(modules):
    return [m for m in modules if isinstance(m, (_BatchNorm, GroupNorm))]


def all_norms_training(modules, training):
    bns = [m for m in modules if isinstance(m, _BatchNorm)]
    return bool(bns) and all(m.training == training for m in bns)


def assert_mrla_everywhere(model, mrla_cfg):
    cls = dict(MRLALight=MRLALight, MRLABase=MRLABase)[mrla_cfg['type']]
    found = blocks(model)
    assert found and all(isinstance(b.mrla, cls) for b in found)
    for b in found:
        assert b.mrla.num_heads * b.mrla.dim_per_head == b.mrla.channels


def assert_forward(model, widths, size=32):
    """A training-mode forward of a 1x3xSIZExSIZE image: one map per
    out index, strides 4, 8, 16, 32."""
    model.train()
    feats = model(torch.randn(1, 3, size, size))
    assert [tuple(f.shape) for f in feats] == [
        (1, w, size // 4 >> i, size // 4 >> i) for i, w in enumerate(widths)]
    assert all(torch.isfinite(f).all() for f in feats)


def assert_frozen_stage1(model, stem):
    model.train()
    assert all_norms_training(stem.modules(), False)
    assert not any(p.requires_grad for p in stem.parameters())
    layer1 = model.layer1
    assert all_norms_training(layer1.modules(), False)
    # MRLA parameters of the frozen stage included.
    assert any('mrla' in n for n, _ in layer1.named_parameters())
    assert not any(p.requires_grad for p in layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_stem_channels(mrla_cfg):
    model = resnet(mrla_cfg)
    assert model.stem_channels == model.conv1.out_channels == 64
    for kwargs, stem in [(dict(base_channels=3), 3),
                         (dict(stem_channels=3), 3),
                         (dict(stem_channels=3, base_channels=2), 3)]:
        model = resnet(mrla_cfg, **kwargs)
        assert model.stem_channels == model.conv1.out_channels == stem
        assert model.norm1.num_features == stem
        assert model.layer1[0].conv1.in_channels == stem
        assert_mrla_everywhere(model, mrla_cfg)
    model = resnet_v1d(mrla_cfg, stem_channels=6)
    model.train()
    assert [model.stem[i].out_channels for i in (0, 3, 6)] == [3, 3, 6]
    assert [model.stem[i].num_features for i in (1, 4, 7)] == [3, 3, 6]
    assert model.layer1[0].conv1.in_channels == 6


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
@pytest.mark.parametrize('kwargs,err', [
    (dict(depth=20), KeyError),
    (dict(num_stages=0), AssertionError),
    (dict(num_stages=5), AssertionError),
    (dict(dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
          stage_with_dcn=(True, )), AssertionError),
    (dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
                        stages=(False, True, True),
                        position='after_conv3')]), AssertionError),
    (dict(strides=(1, ), dilations=(1, 1), num_stages=3), AssertionError),
    (dict(pretrained=0), TypeError),
    (dict(style='tensorflow'), AssertionError),
])
def test_bad_arguments_fail_as_in_mmdet(mrla_cfg, kwargs, err):
    with pytest.raises(err):
        resnet(mrla_cfg, **kwargs)


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_norm_eval_and_frozen_stages(mrla_cfg):
    model = resnet(mrla_cfg, norm_eval=True, base_channels=1)
    model.train()
    assert all_norms_training(model.modules(), False)
    # Builds with a torchvision checkpoint named (loaded by init_weights).
    model = resnet(
        mrla_cfg, norm_eval=True, pretrained='torchvision://resnet50')
    model.train()
    assert all_norms_training(model.modules(), False)
    assert model.init_cfg == dict(
        type='Pretrained', checkpoint='torchvision://resnet50')

    model = resnet(mrla_cfg, frozen_stages=1, base_channels=1)
    assert_frozen_stage1(model, nn.ModuleList([model.conv1, model.norm1]))
    model = resnet_v1d(mrla_cfg, frozen_stages=1, base_channels=2)
    assert len(model.stem) == 9
    assert_frozen_stage1(model, model.stem)


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_forward_shapes(mrla_cfg):
    model = resnet(mrla_cfg, depth=18)
    assert_mrla_everywhere(model, mrla_cfg)
    assert_forward(model, [64, 128, 256, 512])
    model = resnet(mrla_cfg, depth=18, with_cp=True)
    assert all(b.with_cp for b in blocks(model))

    model = resnet(mrla_cfg, base_channels=1)
    assert norms(model.modules()) and all(
        isinstance(m, _BatchNorm) for m in norms(model.modules()))
    assert_mrla_everywhere(model, mrla_cfg)
    assert_forward(model, [4, 8, 16, 32])
    assert_forward(
        resnet(mrla_cfg, out_indices=(0, 1, 2), base_channels=1), [4, 8, 16])
    model = resnet(mrla_cfg, with_cp=True, base_channels=1)
    assert all(b.with_cp for b in blocks(model))
    assert_forward(model, [4, 8, 16, 32])
    assert_forward(resnet_v1d(mrla_cfg, base_channels=2), [8, 16, 32, 64])


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_group_norm(mrla_cfg):
    model = resnet(
        mrla_cfg,
        base_channels=4,
        norm_cfg=dict(type='GN', num_groups=2, requires_grad=True))
    found = norms(model.modules())
    assert found and all(isinstance(m, GroupNorm) for m in found)
    # The MRLA branches' norms follow norm_cfg too.
    assert all(isinstance(b.mrla_norm, GroupNorm) for b in blocks(model))
    assert_forward(model, [16, 32, 64, 128])


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_plugins(mrla_cfg):
    attention = dict(
        type='GeneralizedAttention',
        spatial_range=-1,
        num_heads=8,
        attention_type='0010',
        kv_stride=2)
    plugins = [
        dict(cfg=attention, stages=(False, True, True, True),
             position='after_conv2'),
        dict(cfg=dict(type='NonLocal2d'), position='after_conv2'),
        dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
             stages=(False, True, True, False), position='after_conv3')
    ]
    model = resnet(mrla_cfg, plugins=plugins, base_channels=8)
    for i, width in enumerate([8, 16, 32, 64]):
        for b in blocks(getattr(model, f'layer{i + 1}')):
            assert b.nonlocal_block.in_channels == width
            assert (getattr(b, 'gen_attention_block', None) is None) == (
                i == 0)
            if i in (1, 2):
                assert b.gen_attention_block.in_channels == width
                assert b.context_block.in_channels == 4 * width
            else:
                assert not hasattr(b, 'context_block')
    assert_forward(model, [32, 64, 128, 256])

    plugins = [
        dict(cfg=dict(type='ContextBlock', ratio=1. / 16, postfix=k),
             stages=(False, True, True, False), position='after_conv3')
        for k in (1, 2)
    ]
    model = resnet(mrla_cfg, plugins=plugins, base_channels=8)
    for i, width in enumerate([8, 16, 32, 64]):
        for b in blocks(getattr(model, f'layer{i + 1}')):
            assert not hasattr(b, 'context_block')
            for k in (1, 2):
                block = getattr(b, f'context_block{k}', None)
                assert (block is None) == (i in (0, 3))
                assert block is None or block.in_channels == 4 * width
    assert_forward(model, [32, 64, 128, 256])


@pytest.mark.parametrize('mrla_cfg', MRLA_CFGS, ids=IDS)
def test_zero_init_residual(mrla_cfg):
    model = resnet(mrla_cfg, zero_init_residual=True, base_channels=1)
    model.init_weights()
    found = blocks(model)
    assert found
    for b in found:
        last = b.norm3 if isinstance(b, Bottleneck) else b.norm2
        assert all((p == 0).all() for p in last.parameters())
    assert_forward(model, [4, 8, 16, 32])


@pytest.mark.parametrize('layer,channels,paper,heads', [
    ('MRLALight', 256, 32, 8),
    ('MRLALight', 2048, 32, 64),
    ('MRLABase', 64, 16, 4),
    ('MRLABase', 1024, 16, 64),
    ('MRLALight', 4, 32, 1),
    ('MRLALight', 16, 32, 1),
    ('MRLABase', 12, 16, 1),
    ('MRLALight', 48, 32, 1),
    ('MRLALight', 96, 32, 3),
    ('MRLABase', 24, 16, 1),
    ('MRLABase', 40, 16, 2),
    ('MRLABase', 52, 16, 2),
    ('MRLALight', 100, 32, 2),
])
def test_default_heads(layer, channels, paper, heads, monkeypatch):
    logged = []
    monkeypatch.setattr(builder, 'print_log',
                        lambda msg, **kwargs: logged.append(msg))
    builder._log_head_choice.cache_clear()
    built = [
        builder.build_mrla_layer(
            dict(type=layer), channels, {layer: paper}) for _ in range(3)
    ]
    assert all(b.num_heads == heads for b in built)
    assert all(b.dim_per_head * heads == channels for b in built)
    if channels % paper == 0:
        # The paper's heads, and nothing to say.
        assert built[0].dim_per_head == paper and logged == []
    else:
        # Once per width, however many layers have it.
        assert logged == [
            f"{layer}: the paper's dim_per_head={paper} does not divide "
            f'channels={channels}; using num_heads={heads} '
            f'(dim_per_head={channels // heads}). Set dim_per_head or '
            'num_heads in mrla_cfg to choose.'
        ]


@pytest.mark.parametrize('mrla_cfg,message', [
    (dict(type='MRLALight', dim_per_head=32),
     'dim_per_head=32 does not divide channels=4'),
    (dict(type='MRLABase', dim_per_head=16),
     'dim_per_head=16 does not divide channels=4'),
    (dict(type='MRLALight', num_heads=8), 'num_heads=8 does not divide '
     'channels=4'),
])
def test_heads_the_user_wrote_must_divide(mrla_cfg, message):
    with pytest.raises(ValueError, match=message):
        resnet(mrla_cfg, base_channels=1)

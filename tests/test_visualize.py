"""The layer-attention visualiser on tiny MRLA models."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mrla_mm  # noqa: F401
from mrla_mm.converters import CheckpointError
from mrla_mm.models import MRLABase, MRLALight
from mrla_mm.visualization import (
    BaseGroupAttention,
    LayerAttention,
    LayerAttentionRecorder,
    LightGroupAttention,
    group_name,
    layer_attention_figures,
)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_tool():
    """tools/analysis/visualize_layer_attention.py, which loads the
    checkpoint and prepares the images with the config's pipeline."""
    spec = importlib.util.spec_from_file_location(
        'visualize_layer_attention_tool',
        osp.join(ROOT, 'tools', 'analysis', 'visualize_layer_attention.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


TOOL = _load_tool()
build_model_from_checkpoint = TOOL.build_model_from_checkpoint
record_layer_attention = TOOL.record_layer_attention
visualize_layer_attention = TOOL.visualize_layer_attention

CLASSIFIER = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], to_rgb=True),
    backbone=dict(
        type='MRLAResNet', depth=18, stem_channels=16, base_channels=16,
        mrla_cfg=dict(type='MRLABase', dim_per_head=8)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""

DETECTOR = """
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True, type='MRLAResNet', depth=18, stem_channels=16,
        base_channels=16, out_indices=(1, 2, 3),
        mrla_cfg=dict(type='MRLALight', dim_per_head=8)),
    neck=dict(in_channels=[32, 64, 128], out_channels=32, start_level=0,
              num_outs=3),
    bbox_head=dict(num_classes=3, in_channels=32, feat_channels=32,
                   stacked_convs=1,
                   anchor_generator=dict(strides=[8, 16, 32])))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def build(config_path):
    cfg = Config.fromfile(config_path)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def mrla_layers(model, kind):
    return {n: m for n, m in model.named_modules() if isinstance(m, kind)}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(70, 90, 3), (80, 64, 3), (64, 64, 3)]):
        path = str(tmp / f'img{i}.png')
        mmcv.imwrite(rng.integers(0, 256, shape, dtype=np.uint8), path)
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    """A random MRLA-base classifier whose layer2.1 query is zero."""
    tmp = tmp_path_factory.mktemp('cls')
    config = str(tmp / 'cls.py')
    with open(config, 'w') as f:
        f.write(CLASSIFIER)
    torch.manual_seed(0)
    model = build(config)
    # A zero query scores every key 0: uniform weights 1/2 over layer2.0
    # and layer2.1, whatever the image.
    torch.nn.init.zeros_(model.backbone.layer2[1].mrla.query_conv.weight)
    ckpt = str(tmp / 'cls.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    return config, ckpt, model


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    """A random MRLA-light RetinaNet whose layer3.0 query is zero."""
    tmp = tmp_path_factory.mktemp('det')
    config = str(tmp / 'det.py')
    with open(config, 'w') as f:
        f.write(DETECTOR)
    torch.manual_seed(0)
    model = build(config)
    torch.nn.init.zeros_(model.backbone.layer3[0].mrla.query_conv.weight)
    ckpt = str(tmp / 'det.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    return config, ckpt, model


def test_base_weights_sum_to_one_and_png_written(classifier, images,
                                                 tmp_path):
    config, ckpt, model = classifier
    out_dir = str(tmp_path / 'vis')
    result = visualize_layer_attention(
        config, ckpt, images, out_dir, per_head=True)
    assert result.num_images == 3 and not result.light
    assert [g.name for g in result.base] == [
        'layer1', 'layer2', 'layer3', 'layer4'
    ]
    assert [g.layers for g in result.base][1] == [
        'layer2.0.mrla', 'layer2.1.mrla'
    ]
    for g in result.base:
        assert g.num_heads == g.weights[-1].shape[0] > 1
        m = g.matrix()
        # Lower triangular, every row (a layer's weights) sums to one, the
        # first layer of a stage attends to itself only.
        assert torch.isnan(m.triu(1)[m.triu(1) != 0]).all()
        assert torch.allclose(m.nansum(1), torch.ones(len(g.layers)),
                              atol=1e-6)
        assert m[0, 0] == 1
        for head in range(g.num_heads):
            assert torch.allclose(
                g.matrix(head).nansum(1), torch.ones(len(g.layers)),
                atol=1e-6)
    assert torch.allclose(result.base[1].matrix()[1], torch.tensor(
        [0.5, 0.5]), atol=1e-6)
    # Other layers are not uniform: the recorded weights depend on data.
    assert not torch.allclose(result.base[2].matrix()[1],
                              torch.tensor([0.5, 0.5]), atol=1e-3)
    for name in ['mrla_base_weights.png'] + [
            f'mrla_base_weights_layer{i}_per_head.png' for i in range(1, 5)
    ]:
        image = mmcv.imread(osp.join(out_dir, name))
        assert image is not None and image.shape[0] > 100, name
    summary = open(osp.join(out_dir, 'summary.txt')).read()
    assert 'layer2.1.mrla: self 0.500' in summary
    numbers = json.load(open(osp.join(out_dir, 'layer_attention.json')))
    assert numbers['base'][1]['weights'][1] == result.base[1].weights[
        1].tolist()


def test_average_over_images(classifier, images):
    config, ckpt, _ = classifier
    model, cfg = build_model_from_checkpoint(config, ckpt)
    each = [record_layer_attention(model, cfg, [p]) for p in images]
    both = record_layer_attention(model, cfg, images)
    for g, group in enumerate(both.base):
        for t, w in enumerate(group.weights):
            mean = sum(r.base[g].weights[t] for r in each) / len(each)
            assert torch.allclose(w, mean, atol=1e-6)
    first = each[0].base[3].weights[1]
    assert not torch.allclose(first, each[1].base[3].weights[1], atol=1e-4)


def test_hooks_leave_outputs_unchanged_and_are_removed(classifier):
    _, _, model = classifier
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.backbone(x)
    with LayerAttentionRecorder(model.backbone) as recorder:
        during = recorder.forward(model.backbone, x)
    for a, b in zip(before, during):
        assert torch.equal(a, b)
    assert all(not m._forward_hooks for m in model.modules())
    assert recorder.result().num_images == 2


def test_light_gates_and_lambda_on_a_detector(detector, images, tmp_path):
    config, ckpt, model = detector
    out_dir = str(tmp_path / 'vis')
    result = visualize_layer_attention(config, ckpt, images[:2], out_dir)
    assert not result.base
    assert [g.name for g in result.light] == [
        'layer1', 'layer2', 'layer3', 'layer4'
    ]
    layers = mrla_layers(model.backbone, MRLALight)
    for g in result.light:
        assert g.gates.shape == (2, layers[g.layers[0]].num_heads)
        assert ((g.gates >= 0) & (g.gates <= 1)).all()
        for i, name in enumerate(g.layers):
            lam = layers[name].lambda_t.detach().abs()
            assert torch.allclose(
                g.lambda_abs[i],
                lam.reshape(layers[name].num_heads, -1).mean(1))
    # sigmoid(0) for the zero query; data-dependent elsewhere.
    assert torch.allclose(result.light[2].gates[0], torch.tensor(0.5))
    assert not torch.allclose(result.light[2].gates[1], torch.tensor(0.5),
                              atol=1e-3)
    for name in ['mrla_light_gates.png', 'mrla_light_lambda.png']:
        assert mmcv.imread(osp.join(out_dir, name)) is not None, name
    assert not osp.exists(osp.join(out_dir, 'mrla_base_weights.png'))


def test_command_line(detector, images, tmp_path):
    config, ckpt, _ = detector
    out_dir = tmp_path / 'cli'
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/visualize_layer_attention.py',
         config, ckpt, *images, '--out-dir', str(out_dir)],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert 'MRLA-light: gate' in proc.stdout
    assert 'layer3: 2 layers' in proc.stdout
    assert (out_dir / 'mrla_light_gates.png').is_file()


def test_clear_errors(classifier, detector, images, tmp_path):
    config, _, _ = classifier
    _, det_ckpt, _ = detector
    # The MRLA ResNet's own load-time check names the first key.
    with pytest.raises(CheckpointError,
                       match='do not fit MRLA'):
        build_model_from_checkpoint(config, det_ckpt)
    with pytest.raises(ValueError, match='has no MRLABase or MRLALight'):
        LayerAttentionRecorder(torch.nn.Conv2d(1, 1, 1))
    model, cfg = build_model_from_checkpoint(*classifier[:2])
    with pytest.raises(FileNotFoundError, match='nope.png'):
        record_layer_attention(model, cfg, [str(tmp_path / 'nope.png')])
    assert mrla_layers(model, MRLABase)


def test_group_name():
    assert group_name('layer1.0.mrla') == 'layer1'
    assert group_name('stages.2.11.mrla') == 'stages.2'
    assert group_name('layers.3.mrla') == 'layers'
    assert group_name('mrla') == 'mrla'


VIT = """
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], to_rgb=True),
    backbone=dict(
        type='MRLAVisionTransformer', img_size=32, patch_size=8,
        arch=dict(embed_dims=32, num_layers=6, num_heads=2,
                  feedforward_channels=64),
        mrla_cfg=dict(type='MRLABase'), mrla_group_size=3),
    neck=None,
    head=dict(type='VisionTransformerClsHead', num_classes=3,
              in_channels=32))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=32, edge='short'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]))
"""


def test_vit_base_groups(images, tmp_path):
    """A ViT's MRLA-base groups share one module list: named by range."""
    config = str(tmp_path / 'vit.py')
    with open(config, 'w') as f:
        f.write(VIT)
    torch.manual_seed(0)
    ckpt = str(tmp_path / 'vit.pth')
    torch.save(dict(state_dict=build(config).state_dict()), ckpt)
    result = visualize_layer_attention(config, ckpt, images[:2],
                                       str(tmp_path / 'vis'), per_head=True)
    assert [g.name for g in result.base] == ['layers.0-2', 'layers.3-5']
    assert result.base[1].layers[0] == 'layers.3.mrla.mrla'
    for g in result.base:
        assert g.num_heads == 2
        assert torch.allclose(g.matrix().nansum(1), torch.ones(3),
                              atol=1e-6)
    assert (tmp_path / 'vis' / 'mrla_base_weights_layers.3-5_per_head.png'
            ).is_file()


def panels(fig):
    """The heatmap axes of a figure and its colour bars."""
    bars = [ax for ax in fig.axes if ax.get_label() == '<colorbar>']
    return [ax for ax in fig.axes if ax not in bars], bars


def cell_texts(ax):
    return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize('lambda_top', [0.85, 1.25])
def test_pictures_read_at_a_glance(lambda_top):
    light = [
        LightGroupAttention('layer1', ['layer1.0.mrla', 'layer1.1.mrla'],
                            torch.tensor([[0.2], [0.7]]),
                            torch.tensor([[0.65], [lambda_top]])),
        LightGroupAttention('layer2', ['layer2.0.mrla'],
                            torch.rand(1, 32), torch.rand(1, 32)),
    ]
    base = [
        BaseGroupAttention('layer3', [f'layer3.{i}.mrla' for i in range(3)],
                           [torch.full((2, t + 1), 1 / (t + 1))
                            for t in range(3)])
    ]
    figures = layer_attention_figures(
        LayerAttention(num_images=2, base=base, light=light), per_head=True)
    assert set(figures) == {
        'mrla_base_weights.png', 'mrla_base_weights_layer3_per_head.png',
        'mrla_light_gates.png', 'mrla_light_lambda.png'
    }
    ranges = {
        'mrla_base_weights.png': (0, 1),
        'mrla_base_weights_layer3_per_head.png': (0, 1),
        'mrla_light_gates.png': (0, 1),
        'mrla_light_lambda.png': (0, max(1, lambda_top)),
    }
    for name, fig in figures.items():
        axes, bars = panels(fig)
        # One colour scale for every panel, fixed to the quantity's range,
        # and one colour bar for it.
        assert {ax.images[0].get_clim() for ax in axes} == {ranges[name]}
        assert len(bars) == 1, name
    gates, _ = panels(figures['mrla_light_gates.png'])
    # A single head: one integer tick, no -0.5 .. 0.5.
    assert list(gates[0].get_xticks()) == [0]
    assert [t.get_text() for t in gates[0].get_xticklabels()] == ['0']
    assert [t.get_text() for t in gates[0].get_yticklabels()] == [
        'layer1.0', 'layer1.1'
    ]
    assert gates[0].get_title() == 'layer1: 2 layers x 1 head'
    # Values on the few cells; none on a 32-head row.
    assert cell_texts(gates[0]) == ['0.20', '0.70']
    assert not cell_texts(gates[1])
    assert len(gates[1].get_xticks()) <= 16
    lam, _ = panels(figures['mrla_light_lambda.png'])
    assert cell_texts(lam[0]) == ['0.65', f'{lambda_top:.2f}']
    per_head, _ = panels(figures['mrla_base_weights_layer3_per_head.png'])
    assert [ax.get_title() for ax in per_head] == [
        'layer3.0: 2 heads', 'layer3.1: 2 heads', 'layer3.2: 2 heads'
    ]
    assert cell_texts(per_head[2]) == ['0.33'] * 6
    assert [t.get_text() for t in per_head[2].get_yticklabels()] == ['0', '1']
    mean, _ = panels(figures['mrla_base_weights.png'])
    assert mean[0].get_title() == 'layer3: mean of 2 heads'
    assert cell_texts(mean[0]) == ['1.00', '0.50', '0.50', '0.33', '0.33',
                                   '0.33']
    import matplotlib.pyplot as plt
    for fig in figures.values():
        plt.close(fig)

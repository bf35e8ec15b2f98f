"""MRLAVisionTransformer: exactness against the float64 reference, the
converter of the authors' DeiT checkpoints, mmpretrain DeiT weights, and
bad input."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

import mrla_mm  # noqa: F401
from mrla_mm.converters import (
    CheckpointError,
    build_deit_backbone,
    check_state_dict,
    convert,
    convert_deit,
)
from mrla_mm.models import MRLAVisionTransformer
import mrla_reference_vit as RV
from conftest import rel_err

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'model_converters',
                'mrla_official_to_openmmlab.py')
# A small DeiT: 4 self-attention heads, 4 MRLA heads of 16 channels.
ARCH = dict(embed_dims=64, num_layers=8, num_heads=4,
            feedforward_channels=256)
IMG = (32, 48)  # a 4 x 6 patch grid at patch size 8
TYPES = dict(light='MRLALight', base='MRLABase')


def _double(sd):
    return {k: v.double() for k, v in sd.items()}


def _classifier(mode, **backbone):
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(
                type='MRLAVisionTransformer', arch=ARCH, img_size=IMG,
                patch_size=8, mrla_cfg=dict(type=TYPES[mode]), **backbone),
            head=dict(type='VisionTransformerClsHead', num_classes=10,
                      in_channels=64)))


def _backbone(mode, **kwargs):
    kwargs.setdefault('img_size', IMG)
    kwargs.setdefault('out_type', 'raw')
    return MRLAVisionTransformer(
        arch=ARCH, patch_size=8, mrla_cfg=dict(type=TYPES[mode]), **kwargs)


def _ref_logits(x, sd, mode, **kwargs):
    tokens = RV.deit_mrla(x, sd, mode, num_heads=4, **kwargs)
    return tokens[:, 0] @ sd['head.weight'].T + sd['head.bias']


@pytest.mark.parametrize('mode', ['light', 'base'])
@pytest.mark.parametrize('training', [False, True])
def test_classifier_matches_reference(mode, training):
    """Class-token logits of the converted classifier on a non-square grid,
    float32 and float64, in train and eval mode (no dropout configured)."""
    sd = RV.random_deit_state_dict(mode, seed=1)
    state, arch = convert(sd, fmt='mmpretrain', keep_head=True)
    assert arch == f'deit_{mode}'
    x = torch.randn(2, 3, *IMG, dtype=torch.float64)
    ref = _ref_logits(x, _double(sd), mode)

    model = _classifier(mode)
    model.load_state_dict(state, strict=True)
    model.train(training)
    with torch.no_grad():
        err32 = rel_err(model(x.float(), mode='tensor'), ref)
    model64 = _classifier(mode).double()
    model64.load_state_dict(_double(state), strict=True)
    model64.train(training)
    with torch.no_grad():
        err64 = rel_err(model64(x, mode='tensor'), ref)
    print(f'deit-{mode} train={training}: fp32 {err32:.2e} fp64 {err64:.2e}')
    assert err32 <= 5e-6  # measured 2.4e-7 (light), 5.6e-7 (base)
    assert err64 <= 1e-12


@pytest.mark.parametrize('mode,group_size', [('light', None), ('base', 4),
                                             ('base', 3), ('base', 1)])
def test_tokens_and_grads_match_reference(mode, group_size):
    """All tokens (class and patches) and the input gradient, float64;
    base groups of 4 (reference), 3 (not dividing the depth) and 1."""
    sd = _double(RV.random_deit_state_dict(mode, seed=2, with_head=False))
    model = _backbone(mode, mrla_group_size=group_size).double()
    model.load_state_dict(convert(sd, fmt='mmdet')[0], strict=True)
    x = torch.randn(2, 3, *IMG, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 25, 64, dtype=torch.float64)
    out = model(x)[0]
    ref = RV.deit_mrla(x, sd, mode, num_heads=4, group_size=group_size or 4)
    assert rel_err(out, ref) <= 1e-12
    first_key = model.layers[0].mrla.mrla.key_conv.weight
    grad, grad_key = torch.autograd.grad((out * r).sum(), (x, first_key))
    grad_ref, = torch.autograd.grad((ref * r).sum(), x)
    assert rel_err(grad, grad_ref) <= 1e-10
    # Light and base groups > 1 use the first key beyond its own layer.
    assert (grad_key.abs().sum() > 0) == (group_size != 1)


@pytest.mark.parametrize('mode', ['light', 'base'])
@pytest.mark.parametrize('shape', [(48, 32), (40, 40)])
def test_grid_comes_from_the_input(mode, shape):
    """An input of another size and aspect ratio than ``img_size``: the
    patch grid (6x4, 5x5) comes from the input, not a square root."""
    sd = RV.random_deit_state_dict(mode, seed=3, with_head=False)
    model = _backbone(mode)
    model.load_state_dict(convert(sd, fmt='mmdet')[0], strict=True)
    model.eval()
    grid = (shape[0] // 8, shape[1] // 8)
    ref_sd = _double(sd)
    ref_sd['pos_embed'] = resize_pos_embed(sd['pos_embed'], (4, 6),
                                           grid).double()
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    with torch.no_grad():
        out = model(x.float())[0]
    assert out.shape == (2, 1 + grid[0] * grid[1], 64)
    # Measured at most 7.1e-7 (base, 6x4 grid).
    assert rel_err(out, RV.deit_mrla(x, ref_sd, mode, num_heads=4)) <= 5e-6


def test_without_class_token_featmap():
    """No class token: all tokens are patches; ``featmap`` output."""
    sd = RV.random_deit_state_dict('light', seed=4, with_head=False)
    sd['pos_embed'] = sd['pos_embed'][:, 1:]
    del sd['cls_token']
    model = _backbone('light', with_cls_token=False, out_type='featmap')
    state, _ = convert(sd, fmt='mmdet')
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, *IMG, dtype=torch.float64)
    with torch.no_grad():
        out = model(x.float())[0]
    ref = RV.deit_mrla(x, _double(sd), 'light', num_heads=4,
                       with_cls_token=False)
    assert out.shape == (2, 64, 4, 6)
    assert rel_err(out, RV.to_map(ref, (4, 6))) <= 5e-6  # measured 5.4e-7


def test_out_indices_and_frozen_stages():
    model = _backbone('light', out_indices=(1, 7), out_type='cls_token',
                      frozen_stages=2)
    outs = model(torch.randn(1, 3, *IMG))
    assert [o.shape for o in outs] == [(1, 64), (1, 64)]
    assert not any(p.requires_grad for p in model.layers[1].mrla.parameters())
    assert all(p.requires_grad for p in model.layers[2].mrla.parameters())
    assert model.get_layer_depth('backbone.layers.3.mrla.normx.weight',
                                 'backbone.') == (4, 10)


@pytest.mark.parametrize('mode', ['light', 'base'])
def test_mmpretrain_deit_weights_load_with_only_mrla_missing(tmp_path, mode):
    """An mmpretrain DeiT-tiny classifier's checkpoint fits ours, through
    the backbone's ``Pretrained`` init, with only MRLA keys missing."""
    plain = MODELS.build(
        dict(type='ImageClassifier',
             backbone=dict(type='VisionTransformer', arch='deit-tiny'),
             head=dict(type='VisionTransformerClsHead', num_classes=1000,
                       in_channels=192)))
    path = str(tmp_path / 'deit-tiny.pth')
    torch.save(dict(state_dict=plain.state_dict()), path)
    model = MRLAVisionTransformer(
        arch='deit-tiny', mrla_cfg=dict(type=TYPES[mode]),
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    plain_keys = {k[len('backbone.'):] for k in plain.state_dict()
                  if k.startswith('backbone.')}
    missing = set(model.state_dict()) - plain_keys
    assert plain_keys <= set(model.state_dict())
    assert missing and all('.mrla.' in k for k in missing)
    # Per block: q, k, v, normx (2); light adds lambda and normo (2).
    assert len(missing) == 12 * (8 if mode == 'light' else 5)
    model.init_weights()
    assert torch.equal(model.layers[5].ffn.layers[1].weight,
                       plain.backbone.layers[5].ffn.layers[1].weight)
    # Parameters added per block: light 14C + 2k, base 11C + 2k (k = 5).
    extra = (sum(p.numel() for p in model.parameters()) -
             sum(p.numel() for p in plain.backbone.parameters()))
    assert extra == 12 * ((14 if mode == 'light' else 11) * 192 + 10)
    x = torch.randn(1, 3, 64, 96)
    assert model(x)[0].shape == (1, 192)


@pytest.mark.parametrize('mode', ['light', 'base'])
def test_converter_cli_deit_checkpoint(tmp_path, mode):
    """The DeiT script's checkpoint layout (weights under ``model``, EMA
    under ``model_ema``) through the converter CLI, at DeiT-tiny size."""
    sd = RV.random_deit_state_dict(mode, embed_dims=192, depth=12,
                                   patch_size=16, grid=(14, 14),
                                   num_classes=1000, seed=5)
    ema = {k: v + 1 for k, v in sd.items()}
    src = tmp_path / 'best_checkpoint.pth'
    torch.save(dict(model=sd, model_ema=ema, epoch=299), src)
    dst = tmp_path / 'out' / 'deit.pth'
    out = subprocess.run(
        [sys.executable, TOOL, src, dst, '--format', 'mmpretrain',
         '--keep-head', '--ema'],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert f'deit_{mode}' in out.stdout
    state = torch.load(dst, map_location='cpu')['state_dict']
    assert torch.equal(state['head.layers.head.weight'], ema['head.weight'])
    assert torch.equal(state['backbone.layers.11.mrla.mrla.value_conv.weight'],
                       ema['blocks.11.mrla.mrla.Wv.weight'])
    if mode == 'light':
        assert torch.equal(state['backbone.layers.3.mrla.mrla.lambda_t'],
                           ema['blocks.3.mrla.lambda_t'])
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    built = build_deit_backbone(f'deit_{mode}', sd)
    assert built.arch_settings['num_heads'] == 3
    assert built.patch_resolution == (14, 14)
    built.load_state_dict(backbone, strict=True)


def test_converter_rejects_foreign_and_mismatched_keys():
    sd = RV.random_deit_state_dict('light', seed=6)
    sd['dist_token'] = torch.zeros(1, 1, 64)
    with pytest.raises(CheckpointError,
                       match=r"no place in MRLAVisionTransformer: "
                       r"\['dist_token'\]"):
        convert(sd)
    del sd['dist_token']
    with pytest.raises(CheckpointError, match="'deit_base' was asked for"):
        convert(sd, arch='deit_base')
    with pytest.raises(CheckpointError, match='lambda_t / normo keys'):
        convert_deit(sd, 'deit_base')
    with pytest.raises(ValueError, match='keep_head=True needs'):
        convert_deit(sd, 'deit_light', keep_head=True, fmt='mmdet')
    with pytest.raises(CheckpointError, match='pass num_heads'):
        build_deit_backbone('deit_light', sd)
    state, _ = convert(sd, fmt='mmdet')
    del state['layers.2.mrla.normo.bias']
    with pytest.raises(CheckpointError,
                       match=r"missing \['layers.2.mrla.normo.bias'\]"):
        check_state_dict(state, _backbone('light'))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError,
                       match='dim_per_head=24 does not divide channels=64'):
        MRLAVisionTransformer(arch=ARCH, mrla_cfg=dict(
            type='MRLALight', dim_per_head=24))
    with pytest.raises(ValueError,
                       match='mrla_group_size must be an int >= 1.*got 0'):
        MRLAVisionTransformer(arch=ARCH, mrla_cfg=dict(type='MRLABase'),
                              mrla_group_size=0)
    with pytest.raises(ValueError, match='only applies to mrla_cfg type '
                       'MRLABase'):
        MRLAVisionTransformer(arch=ARCH, mrla_group_size=4)
    with pytest.raises(ValueError, match='mrla_cfg must not set group_size'):
        MRLAVisionTransformer(arch=ARCH, mrla_cfg=dict(
            type='MRLABase', group_size=4))
    with pytest.raises(ValueError, match=r"mrla_cfg\['type'\] must be one"):
        MRLAVisionTransformer(arch=ARCH, mrla_cfg=dict(type='SE'))
    model = _backbone('light')
    tokens = torch.randn(2, 25, 64)
    with pytest.raises(ValueError,
                       match=r'token count 25 does not match the patch grid '
                       r'4x4 plus 1 extra token\(s\) \(expected 17\)'):
        model.layers[0].mrla(tokens, (4, 4), tokens)


def test_plain_and_mrla_defaults():
    plain = MRLAVisionTransformer(arch=ARCH, mrla_cfg=None)
    assert not any('mrla' in k for k in plain.state_dict())
    light = MRLAVisionTransformer(arch=ARCH)
    layer = light.layers[0].mrla.mrla
    assert (type(layer).__name__, layer.dim_per_head, layer.value_act) == (
        'MRLALight', 16, 'gelu')
    assert light.layers[0].mrla.normx.eps == 1e-6
    base = MRLAVisionTransformer(arch=ARCH, mrla_cfg=dict(type='MRLABase'))
    assert base.mrla_group_size == 4
    assert base.layers[0].mrla.mrla.value_act == 'identity'
    assert not hasattr(base.layers[0].mrla, 'normo')

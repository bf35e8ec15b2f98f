import os.path as osp
import subprocess
import sys

import pytest
import torch

from mrla_mm.converters import (
    CheckpointError,
    check_state_dict,
    convert,
    detect_arch,
    load_reference_checkpoint,
)
from mrla_mm.models import MRLAResNet
import mrla_reference as R
from conftest import rel_err

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'model_converters',
                'mrla_official_to_openmmlab.py')


def _save_authors_ckpt(path, sd, ddp=True):
    """The layout of the authors' ImageNet script (MRLA.md)."""
    state = {('module.' + k if ddp else k): v for k, v in sd.items()}
    torch.save(
        dict(epoch=100, state_dict=state, best_acc1=torch.tensor(77.75),
             optimizer=dict(state={}, param_groups=[])), path)


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize('mode', ['light', 'base'])
def test_cli_round_trip(tmp_path, mode):
    sd = R.random_resnet_state_dict(mode, seed=5)
    src, dst = tmp_path / 'model_best.pth.tar', tmp_path / 'out' / 'r50.pth'
    _save_authors_ckpt(src, sd)
    out = _run_tool(src, dst)
    assert out.returncode == 0, out.stderr
    assert f'resnet_{mode}' in out.stdout
    ckpt = torch.load(dst, map_location='cpu')
    assert ckpt['meta']['arch'] == f'resnet_{mode}'
    model = MRLAResNet(
        50, mrla_cfg=dict(type='MRLALight' if mode == 'light' else 'MRLABase'),
        deep_stem=mode == 'base', out_indices=(0, 1, 2, 3))
    model.load_state_dict(ckpt['state_dict'], strict=True)
    model.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        outs = model(x.float())
    refs = R.resnet_mrla(
        x, {k: v.double() if v.is_floating_point() else v
            for k, v in sd.items()}, mode, training=False)
    assert max(rel_err(o, r) for o, r in zip(outs, refs)) <= 1e-5


def test_mmpretrain_format_keeps_head(tmp_path):
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import mrla_mm  # noqa: F401
    sd = R.random_resnet_state_dict('light', seed=6)
    src, dst = tmp_path / 'checkpoint.pth.tar', tmp_path / 'cls.pth'
    _save_authors_ckpt(src, sd, ddp=False)
    out = _run_tool(src, dst, '--format', 'mmpretrain', '--keep-head')
    assert out.returncode == 0, out.stderr
    # An earlier test's Runner may have left mmdet as the current scope.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(
            dict(type='ImageClassifier',
                 backbone=dict(type='MRLAResNet', depth=50),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=1000,
                           in_channels=2048)))
    state = torch.load(dst, map_location='cpu')['state_dict']
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.head.fc.weight, sd['fc.weight'])


def test_keep_head_needs_mmpretrain():
    with pytest.raises(ValueError, match='keep_head=True needs'):
        convert(R.random_resnet_state_dict('light'), keep_head=True)


def test_not_an_mrla_checkpoint(tmp_path):
    import torchvision
    path = tmp_path / 'resnet50.pth'
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CheckpointError, match='not an MRLA checkpoint'):
        detect_arch(load_reference_checkpoint(str(path)))
    out = _run_tool(path, tmp_path / 'x.pth')
    assert out.returncode != 0 and 'not an MRLA checkpoint' in out.stderr


def test_corrupt_and_foreign_files(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot read'):
        load_reference_checkpoint(str(text))
    odd = tmp_path / 'odd.pth'
    torch.save(dict(epoch=3, weights=[1, 2]), odd)
    with pytest.raises(CheckpointError, match='expected a state dict'):
        load_reference_checkpoint(str(odd))
    torch.save(dict(state_dict=[1, 2]), odd)
    with pytest.raises(CheckpointError, match="no weights under 'state_dict'"):
        load_reference_checkpoint(str(odd))


def test_arch_mismatch_and_shape_mismatch():
    sd = R.random_resnet_state_dict('light', seed=7)
    with pytest.raises(CheckpointError, match="'resnet_base' was asked for"):
        convert(sd, arch='resnet_base')
    with pytest.raises(ValueError, match='arch must be one of'):
        convert(sd, arch='vgg')
    converted, _ = convert(sd)
    model = MRLAResNet(50, mrla_cfg=dict(type='MRLALight'))
    check_state_dict(converted, model)
    converted['layer2.1.mrla.lambda_t'] = torch.zeros(7)
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch at 'layer2.1.mrla.lambda_t': "
                       r'checkpoint \(7,\), model \(512,\)'):
        check_state_dict(converted, model)
    del converted['layer2.1.mrla.lambda_t']
    with pytest.raises(CheckpointError, match=r"missing \['layer2.1.mrla"):
        check_state_dict(converted, model)


def test_cli_rejects_wrong_depth(tmp_path):
    sd = {k: v for k, v in R.random_resnet_state_dict('light').items()
          if not k.startswith('layer3.5.')}
    src = tmp_path / 'broken.pth.tar'
    _save_authors_ckpt(src, sd)
    out = _run_tool(src, tmp_path / 'x.pth')
    assert out.returncode != 0
    assert 'stage 3 has 5 bottlenecks' in out.stderr

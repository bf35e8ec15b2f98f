"""The mmpretrain configs of configs/mrla_cls: each builds and runs, the
recipes say what their comments say, and the folder demo trains and
evaluates for real."""
import filecmp
import glob
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import mrla_mm  # noqa: F401
from mrla_mm.models import MRLAClsResNet, MRLAVisionTransformer
from test_det_tools import run_dirs, run_tool, scalars, train_cmd

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, 'configs', 'mrla_cls')
DEMO_CFG = osp.join(CFG_DIR, 'resnet18-mrlal_demo_folder.py')
MAKE_DATA = osp.join(ROOT, 'tools', 'misc', 'make_cls_demo_dataset.py')
IMAGENET_CFGS = sorted(
    osp.basename(p) for p in glob.glob(osp.join(CFG_DIR, '*_in1k.py')))


def test_every_imagenet_config_is_listed():
    assert IMAGENET_CFGS == sorted(
        f'{net}-mrla{v}_{setting}_in1k.py'
        for v in 'lb'
        for net, setting in (('resnet50', '8xb32'), ('resnet101', '8xb32'),
                             ('deit-tiny', '4xb256'), ('deit-small', '4xb256'),
                             ('deit-base', '16xb64')))


@pytest.mark.parametrize('name', IMAGENET_CFGS)
def test_imagenet_config_builds_and_runs(name):
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    assert cfg.custom_imports['imports'] == ['mrla_mm']
    backbone = cfg.model.backbone
    is_light = name.split('_')[0].endswith('mrlal')
    assert backbone.mrla_cfg == dict(
        type='MRLALight' if is_light else 'MRLABase')
    batch = int(name.split('_')[1].split('x')[0]) * (
        cfg.train_dataloader.batch_size)
    warmup, main = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR',
                                                           warmup.end, True)
    if name.startswith('resnet'):
        assert backbone.type == 'MRLAResNet'
        assert backbone.depth == int(name[len('resnet'):].split('-')[0])
        assert backbone.mrla_drop_path == 0.2
        assert backbone.get('deep_stem', False) == (not is_light)
        assert (batch, cfg.train_cfg.max_epochs, warmup.end) == (256, 100, 3)
        assert main.milestones == [30, 60, 90]
    else:
        assert backbone.type == 'MRLAVisionTransformer'
        assert backbone.drop_path_rate == 0.1
        assert backbone.get('mrla_group_size') == (None if is_light else 4)
        assert (batch, cfg.train_cfg.max_epochs, warmup.end) == (1024, 300, 5)
        assert main.type == 'CosineAnnealingLR'

    model = MODELS.build(cfg.model)
    model.init_weights()
    expected = MRLAClsResNet if name.startswith(
        'resnet') else MRLAVisionTransformer
    assert type(model.backbone) is expected
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 48), mode='tensor')
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_demo_dataset_generator(tmp_path):
    for out in ('a', 'b'):
        done = subprocess.run(
            [sys.executable, MAKE_DATA, tmp_path / out, '--num-train', '2',
             '--num-val', '1', '--img-size', '16', '--seed', '3'],
            capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert 'train: 8 images of 4 classes' in done.stdout
    names = sorted(
        osp.relpath(p, tmp_path / 'a')
        for p in glob.glob(str(tmp_path / 'a' / '*' / '*' / '*.png')))
    assert len(names) == 12 and names[0] == osp.join('train', 'checker',
                                                     '000000.png')
    assert all(
        filecmp.cmp(tmp_path / 'a' / n, tmp_path / 'b' / n, shallow=False)
        for n in names)
    bad = subprocess.run(
        [sys.executable, MAKE_DATA, tmp_path / 'c', '--img-size', '4'],
        capture_output=True, text=True)
    assert bad.returncode != 0 and '--img-size must be >= 8' in bad.stderr


def test_demo_config_trains_and_evaluates(tmp_path):
    """The folder demo, as configured: 100 iterations from scratch, then
    top-1 on the held-out images, well above chance (25%)."""
    data = tmp_path / 'cls_demo'
    done = subprocess.run([sys.executable, MAKE_DATA, data],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cfg = Config.fromfile(DEMO_CFG)
    cfg.work_dir = str(tmp_path / 'work')
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        loader.dataset.data_root = str(data)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 100
    assert osp.exists(tmp_path / 'work' / 'iter_100.pth')
    top1 = runner.val()['accuracy/top1']
    print(f'demo top-1 after 100 iterations: {top1:.2f}%')
    assert 50 <= top1 <= 100


def test_demo_config_trains_with_amp_on_cpu(tmp_path):
    """``tools/train.py --amp`` on an mmpretrain config: bfloat16 autocast
    through CPUAmpOptimWrapper, found in mmpretrain's registry. Two
    iterations of the folder demo on a few 64x64 images."""
    data = tmp_path / 'cls_demo'
    run_tool([sys.executable, MAKE_DATA, data, '--num-train', '2',
              '--num-val', '1', '--img-size', '64'])
    work_dir = tmp_path / 'amp'
    roots = [f'{loader}.dataset.data_root={data}'
             for loader in ('train_dataloader', 'val_dataloader')]
    proc = run_tool(train_cmd(
        DEMO_CFG, work_dir, '--amp', '--cfg-options', *roots,
        'train_dataloader.batch_size=4', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2'))
    log = proc.stdout + proc.stderr
    assert "type='CPUAmpOptimWrapper'" in log
    assert "dtype='bfloat16'" in log
    records = scalars(run_dirs(work_dir)[0])
    assert [r['iter'] for r in records] == [1, 2]
    assert all(math.isfinite(r['loss']) for r in records)
    ckpt = torch.load(work_dir / 'iter_2.pth', map_location='cpu',
                      weights_only=False)
    weights = ckpt['state_dict']
    assert any('mrla' in k for k in weights)
    assert all(w.dtype != torch.bfloat16 and torch.isfinite(w).all()
               for w in weights.values() if w.is_floating_point())

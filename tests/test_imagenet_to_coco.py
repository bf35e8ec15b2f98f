"""From an ImageNet config to a COCO config, at demo scale: the commands of
docs/detection.md ("From ImageNet to COCO") on tiny data, through the
tools' own ``main()``: pretrain the classification demo, point the
detection demo's backbone at its checkpoint, train, test, publish."""
import glob
import importlib.util
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from test_det_tools import (
    BATCH,
    ITERS_PER_EPOCH,
    NUM_TRAIN,
    NUM_VAL,
    TINY_CONFIG,
)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_CFG = 'configs/mrla_cls/resnet18-mrlal_demo_folder.py'
DET_CFG = 'configs/demo/mask-rcnn_r18-mrlal-clsdemo-pre_fpn_demo.py'
CLS_ITERS = 2


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet_to_coco')
    for args in (['tools/misc/make_cls_demo_dataset.py', root / 'cls',
                  '--num-train', '2', '--num-val', '1'],
                 ['tools/misc/make_demo_dataset.py', root / 'shapes',
                  '--num-train', str(NUM_TRAIN), '--num-val', str(NUM_VAL)]):
        subprocess.run([sys.executable, *map(str, args)], cwd=ROOT,
                       check=True, capture_output=True)
    return root


def run_tool(path, argv, monkeypatch, runner=None):
    """``python PATH ARGV`` in this process (its ``main()``), optionally
    with another Runner class."""
    spec = importlib.util.spec_from_file_location(
        'mrla_tool_' + osp.basename(path)[:-3], osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if runner is not None:
        monkeypatch.setattr(module, 'Runner', runner)
    monkeypatch.setattr(sys, 'argv', [path, *map(str, argv)])
    module.main()


class FirstStepRecorder(Hook):
    """The backbone's weights before the first step, and every loss."""

    def __init__(self):
        self.backbone = None
        self.losses = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.backbone is None:
            model = runner.model
            model = model.module if is_model_wrapper(model) else model
            self.backbone = {
                k: v.detach().clone()
                for k, v in model.backbone.state_dict().items()
            }

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss']))


def run_log(work_dir):
    (log, ) = glob.glob(osp.join(work_dir, '*', '*.log'))
    with open(log) as f:
        return f.read()


def test_imagenet_checkpoint_starts_the_detector(data, tmp_path,
                                                 monkeypatch):
    monkeypatch.chdir(ROOT)
    cls_root = data / 'cls'
    cls_work = tmp_path / 'cls_work'
    run_tool('tools/train.py', [
        CLS_CFG, '--work-dir', cls_work, '--cfg-options',
        f'train_dataloader.dataset.data_root={cls_root}',
        f'val_dataloader.dataset.data_root={cls_root}',
        f'test_dataloader.dataset.data_root={cls_root}',
        f'train_cfg.max_iters={CLS_ITERS}',
        f'train_cfg.val_interval={CLS_ITERS}',
        f'param_scheduler.T_max={CLS_ITERS}',
        f'default_hooks.checkpoint.interval={CLS_ITERS}'
    ], monkeypatch)
    pretrained = cls_work / f'iter_{CLS_ITERS}.pth'
    classifier = torch.load(pretrained, map_location='cpu',
                            weights_only=False)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in classifier.items()
                if k.startswith('backbone.')}
    assert any('.bn_mrla.' in k for k in backbone)

    shapes = f'{data / "shapes"}/'
    det_cfg = tmp_path / 'tiny_pretrained_det.py'
    det_cfg.write_text(TINY_CONFIG.format(
        base=osp.join(ROOT, DET_CFG), data_root=shapes, batch=BATCH,
        epochs=1))
    det_work = tmp_path / 'det_work'
    recorder = FirstStepRecorder()

    class RecordingRunner(Runner):

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_hook(recorder)

    # (No validation while training: tools/test.py evaluates below.)
    run_tool('tools/train.py', [
        det_cfg, '--work-dir', det_work, '--cfg-options',
        f'model.backbone.init_cfg.checkpoint={pretrained}',
        'train_cfg.val_interval=2'
    ], monkeypatch, runner=RecordingRunner)
    # Before the first step the detector's backbone is the classifier's,
    # every entry, MRLA included; the classifier's head was left out.
    assert set(recorder.backbone) == set(backbone)
    assert all(torch.equal(recorder.backbone[k], v)
               for k, v in backbone.items())
    log = run_log(det_work)
    entries = sum(not k.endswith('num_batches_tracked') for k in backbone)
    mrla = sum(not k.endswith('num_batches_tracked') for k in backbone
               if '.mrla.' in k or '.bn_mrla.' in k)
    assert (f'MRLAResNet: loaded {entries} of {entries} backbone entries '
            f"from {pretrained} (keys under 'backbone.'); MRLA: {mrla} of "
            f'{mrla} entries of 8 branches') in log
    assert ('MRLAResNet: ignored 2 checkpoint entries outside the backbone: '
            'head.fc.weight, head.fc.bias') in log
    assert len(recorder.losses) == ITERS_PER_EPOCH
    assert all(math.isfinite(loss) for loss in recorder.losses)

    trained = det_work / 'epoch_1.pth'
    test_work = tmp_path / 'test_work'
    run_tool('tools/test.py', [det_cfg, trained, '--work-dir', test_work],
             monkeypatch)
    assert 'coco/bbox_mAP' in run_log(test_work)

    release = tmp_path / 'releases' / 'mask-rcnn_r18-mrlal-clsdemo-pre.pth'
    run_tool('tools/model_converters/publish_model.py', [trained, release],
             monkeypatch)
    (published, ) = glob.glob(str(release)[:-len('.pth')] + '-*.pth')
    weights = torch.load(published, map_location='cpu',
                         weights_only=True)['state_dict']
    saved = torch.load(trained, map_location='cpu',
                       weights_only=False)['state_dict']
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], v) for k, v in saved.items())


def test_test_tool_needs_no_imagenet_file(tmp_path, monkeypatch):
    """tools/test.py drops the backbone's Pretrained init_cfg: the tested
    checkpoint brings every weight."""
    import argparse

    from mmdet.registry import MODELS
    spec = importlib.util.spec_from_file_location(
        'mrla_tool_test', osp.join(ROOT, 'tools', 'test.py'))
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    (tmp_path / 'detector.pth').touch()
    monkeypatch.chdir(tmp_path)
    cfg = test.build_config(argparse.Namespace(
        config=osp.join(ROOT, 'configs', 'mask_rcnn',
                        'mask-rcnn_r50-mrlab_fpn_1x_coco.py'),
        checkpoint='detector.pth', work_dir=None, out=None, show=False,
        show_dir=None, wait_time=2, launcher='none', cfg_options=None))
    assert cfg.model.backbone.init_cfg is None
    assert cfg.load_from == 'detector.pth'
    MODELS.build(cfg.model.backbone)

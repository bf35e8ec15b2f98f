"""Every detection config builds and runs one loss and one predict step.

The COCO configs start from ImageNet checkpoints that are not in the
repository: the models are built, without ``init_weights``, next to empty
files of those names, and the test checks where ``init_cfg`` points. Without
the files every COCO config stops while building its model, before any
dataset, saying how to make them (see also tests/test_pretrained_init.py).
"""
import glob
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config

import mrla_mm  # noqa: F401
from mrla_mm.models import MRLABase, MRLALight, MRLAResNet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COCO_DIRS = ('mask_rcnn', 'faster_rcnn', 'retinanet', 'cascade_rcnn')
COCO_CONFIGS = sorted(
    osp.relpath(p, ROOT) for d in COCO_DIRS
    for p in glob.glob(osp.join(ROOT, 'configs', d, '*.py')))
ALL_CONFIGS = COCO_CONFIGS + sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', 'demo', '*.py')))
EXPECTED = {
    'mask-rcnn_r50-mrlal_fpn_1x_coco.py',
    'mask-rcnn_r101-mrlal_fpn_1x_coco.py',
    'mask-rcnn_r50-mrlal_fpn_ms-poly-3x_coco.py',
    'mask-rcnn_r101-mrlal_fpn_ms-poly-3x_coco.py',
    'mask-rcnn_r50-mrlab_fpn_1x_coco.py',
    'faster-rcnn_r50-mrlal_fpn_1x_coco.py',
    'faster-rcnn_r101-mrlal_fpn_1x_coco.py',
    'retinanet_r50-mrlal_fpn_1x_coco.py',
    'cascade-mask-rcnn_r50-mrlal_fpn_1x_coco.py'
}


def load(path):
    return Config.fromfile(osp.join(ROOT, path))


def test_config_set_is_complete():
    assert {osp.basename(p) for p in COCO_CONFIGS} == EXPECTED


@pytest.mark.parametrize('path', COCO_CONFIGS)
def test_coco_config_settings(path):
    cfg = load(path)
    assert cfg.custom_imports == dict(
        imports=['mrla_mm'], allow_failed_imports=False)
    # The standard mmdet recipe: 2 images per GPU x 8 GPUs.
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.get(
        'ann_file', cfg.train_dataloader.dataset.get('dataset', {}).get(
            'ann_file')).endswith('instances_train2017.json')
    backbone = cfg.model.backbone
    depth = 101 if '_r101-' in path else 50
    variant = 'mrlab' if '-mrlab_' in path else 'mrlal'
    assert backbone.type == 'MRLAResNet' and backbone.depth == depth
    assert backbone.mrla_cfg.type == dict(
        mrlal='MRLALight', mrlab='MRLABase')[variant]
    # The authors' detection backbone: no drop path, layer1 frozen, BN
    # statistics frozen.
    assert backbone.mrla_drop_path == 0
    assert backbone.frozen_stages == 1 and backbone.norm_eval
    assert backbone.init_cfg.type == 'Pretrained'
    assert backbone.init_cfg.prefix == 'backbone.'
    assert backbone.init_cfg.checkpoint == (
        f'checkpoints/resnet{depth}_{variant}_in1k_mmdet.pth')
    # The comment block says how to make that file (train the ImageNet
    # config or convert the authors' checkpoint), and what else fits.
    with open(osp.join(ROOT, path)) as f:
        header = f.read().split('_base_')[0]
    assert (f'python tools/train.py configs/mrla_cls/resnet{depth}-'
            f'{variant}_8xb32_in1k.py') in header
    assert 'mrla_official_to_openmmlab.py' in header
    assert backbone.init_cfg.checkpoint in header
    assert 'stops while building the model, before any' in header
    assert (f'model.backbone.init_cfg.checkpoint=torchvision://resnet{depth}'
            in header)
    assert ('model.backbone.deep_stem=False' in header) == (
        variant == 'mrlab')


def placeholder_checkpoint(cfg, folder):
    """An empty file at the config's local init_cfg checkpoint path in
    ``folder``."""
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    checkpoint = init_cfg.get('checkpoint')
    if checkpoint and '://' not in checkpoint:
        (folder / checkpoint).parent.mkdir(parents=True, exist_ok=True)
        (folder / checkpoint).touch()


@pytest.fixture
def dataset_builds(monkeypatch):
    """The datasets built from now on (mmengine's and mmdet's registry)."""
    from mmdet.registry import DATASETS
    built = []
    build = DATASETS.build
    monkeypatch.setattr(DATASETS, 'build',
                        lambda cfg, *a, **k: built.append(cfg) or build(
                            cfg, *a, **k))
    return built


@pytest.mark.parametrize('path', COCO_CONFIGS)
def test_coco_config_without_checkpoint_stops_before_data(
        path, tmp_path, monkeypatch, dataset_builds):
    """What `python tools/train.py CONFIG` does without the ImageNet file:
    the Runner stops while building the model (its datasets come later, in
    train()), naming the config key, the path and how to make the file."""
    from mmengine.runner import Runner
    monkeypatch.chdir(tmp_path)
    cfg = load(path)
    cfg.work_dir = str(tmp_path / 'work')
    with pytest.raises(FileNotFoundError) as error:
        Runner.from_cfg(cfg)
    message = str(error.value)
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    assert message.startswith(
        f"model.backbone.init_cfg.checkpoint='{checkpoint}': no such file")
    assert 'python tools/train.py configs/mrla_cls/' in message
    assert ('python tools/model_converters/mrla_official_to_openmmlab.py'
            in message)
    assert not dataset_builds


def documented_cfg_options(path):
    """The --cfg-options a config's header gives for starting without the
    ImageNet MRLA file, parsed as tools/train.py parses them."""
    import argparse

    from mmengine.config import DictAction
    with open(osp.join(ROOT, path)) as f:
        header = f.read().split('_base_')[0]
    text = header.split('--cfg-options', 1)[1]
    tokens = text.replace('#', ' ').replace('\\', ' ').split()
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *tokens]).cfg_options


@pytest.mark.parametrize('path', COCO_CONFIGS)
def test_documented_start_without_mrla_weights_builds(path, tmp_path,
                                                       monkeypatch):
    """The header's override (torchvision's ResNet; for MRLA-base also the
    plain stem) builds the backbone with no file around: torchvision's
    weights are fetched when the weights are initialised."""
    monkeypatch.chdir(tmp_path)
    cfg = load(path)
    options = documented_cfg_options(path)
    depth = cfg.model.backbone.depth
    assert options['model.backbone.init_cfg.checkpoint'] == (
        f'torchvision://resnet{depth}')
    cfg.merge_from_dict(options)
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.init_cfg['checkpoint'] == f'torchvision://resnet{depth}'
    deep_stem = cfg.model.backbone.get('deep_stem', False)
    assert hasattr(backbone, 'stem') == deep_stem


def _mrla_params(model, stage):
    return [p for n, p in model.backbone.named_parameters()
            if n.startswith(f'{stage}.') and '.mrla.' in n]


@pytest.mark.parametrize('path', ALL_CONFIGS)
def test_config_builds_and_runs(path, tmp_path, monkeypatch):
    cfg = load(path)
    placeholder_checkpoint(cfg, tmp_path)
    monkeypatch.chdir(tmp_path)
    model = MODELS.build(cfg.model)
    assert isinstance(model.backbone, MRLAResNet)
    layer_type = dict(MRLALight=MRLALight,
                      MRLABase=MRLABase)[cfg.model.backbone.mrla_cfg.type]
    assert all(isinstance(b.mrla, layer_type)
               for layer in model.backbone.res_layers
               for b in getattr(model.backbone, layer))
    frozen = cfg.model.backbone.frozen_stages
    if frozen >= 1:
        # frozen_stages covers the MRLA parameters of the frozen stages.
        assert not any(p.requires_grad
                       for p in _mrla_params(model, 'layer1'))
        assert all(p.requires_grad
                   for p in _mrla_params(model, 'layer2'))

    with_mask = cfg.model.get('roi_head', {}).get('mask_head') is not None
    num_classes = (cfg.model.get('roi_head') or cfg.model).get(
        'bbox_head', cfg.model.get('bbox_head'))
    num_classes = (num_classes[0] if isinstance(num_classes, list)
                   else num_classes).num_classes
    packed = demo_mm_inputs(
        2, image_shapes=[(3, 96, 128), (3, 128, 96)], num_items=[3, 2],
        num_classes=num_classes, with_mask=with_mask)
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for n, p in model.backbone.named_parameters()
             if '.mrla.' in n and p.requires_grad]
    assert grads and all(g is not None for g in grads)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        results = model(**data, mode='predict')
    assert len(results) == 2
    for result, sample in zip(results, packed['data_samples']):
        pred = result.pred_instances
        assert pred.bboxes.shape[1] == 4
        assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)
        if with_mask:
            assert pred.masks.shape[1:] == sample.ori_shape

"""``init_cfg=dict(type='Pretrained')`` of the MRLA ResNets: classifier,
converter, published and torchvision checkpoints load into the detection
backbone with every weight accounted for; a checkpoint without MRLA starts
the branches as the identity; a missing file or a foreign architecture
fails, naming what does not fit."""
import os.path as osp

import pytest
import torch
import torchvision
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS as CLS_MODELS

import mrla_mm  # noqa: F401
from mrla_mm.checkpoint.publish import publish_checkpoint
from mrla_mm.converters import CheckpointError, convert
from mrla_mm.models import MRLAClsResNet, MRLAResNet
from mrla_mm.models.backbones import pretrained_init
import mrla_reference as R

SMALL = dict(depth=18, stem_channels=16, base_channels=16,
             out_indices=(0, 1, 2, 3))
LIGHT = dict(type='MRLALight', dim_per_head=8)
BASE = dict(type='MRLABase', dim_per_head=8)
# mmdet's deep stem (an nn.Sequential) under mmpretrain's names.
DET_STEM = {'stem.0.conv': 'stem.0', 'stem.0.bn': 'stem.1',
            'stem.1.conv': 'stem.3', 'stem.1.bn': 'stem.4',
            'stem.2.conv': 'stem.6', 'stem.2.bn': 'stem.7'}


@pytest.fixture
def logged(monkeypatch):
    """The messages the loader logs."""
    lines = []
    monkeypatch.setattr(pretrained_init, 'print_log',
                        lambda msg, **kwargs: lines.append(msg))
    return lines


def randomize(state_dict):
    """Random values in every entry, so that a weight left at its
    initialisation cannot pass for a loaded one."""
    g = torch.Generator().manual_seed(1)
    return {
        k: (v + 0.05 * torch.rand(v.shape, generator=g)
            if v.is_floating_point() else v + 3)
        for k, v in state_dict.items()
    }


def build_classifier(**cfg):
    """An mmpretrain ``ImageClassifier``."""
    # An earlier test's Runner may have left mmdet as the current scope.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return CLS_MODELS.build(dict(type='ImageClassifier', **cfg))


def classifier_state(mrla_cfg=LIGHT, deep_stem=False, **backbone):
    """What tools/train.py saves for an mmpretrain MRLA ResNet classifier:
    ``backbone.*`` and ``head.*`` under ``state_dict``."""
    model = build_classifier(
        backbone=dict(type='MRLAResNet', mrla_cfg=mrla_cfg,
                      deep_stem=deep_stem, **{**SMALL, **backbone}),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=4, in_channels=128))
    return randomize(model.state_dict())


def pretrained(path, prefix='backbone.'):
    return dict(type='Pretrained', checkpoint=str(path), prefix=prefix)


def det_backbone(init_cfg, mrla_cfg=LIGHT, **kwargs):
    model = MRLAResNet(mrla_cfg=mrla_cfg, init_cfg=init_cfg,
                       **{**SMALL, **kwargs})
    model.init_weights()
    return model


def assert_loaded(model, weights, renames=None):
    """Every entry of ``model`` equals the checkpoint's."""
    renames = renames or {}
    state = model.state_dict()
    expected = {}
    for key, value in weights.items():
        module, leaf = key.rsplit('.', 1)
        expected[f'{renames.get(module, module)}.{leaf}'] = value
    assert set(state) == set(expected)
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key


def mrla_entries(model):
    return [k for k in model.state_dict() if '.mrla.' in k or '_mrla.' in k]


@pytest.mark.parametrize('mrla_cfg,deep_stem', [(LIGHT, False),
                                                (BASE, True)])
def test_classifier_checkpoint_loads_into_det_backbone(
        tmp_path, logged, mrla_cfg, deep_stem):
    state = classifier_state(mrla_cfg, deep_stem)
    path = tmp_path / 'iter_100.pth'
    torch.save(dict(meta=dict(iter=100), state_dict=state), path)
    model = det_backbone(pretrained(path), mrla_cfg, deep_stem=deep_stem)
    backbone = {k[len('backbone.'):]: v for k, v in state.items()
                if k.startswith('backbone.')}
    # mmpretrain's deep stem is made of ConvModules, mmdet's is not.
    assert_loaded(model, backbone, DET_STEM if deep_stem else None)
    entries = len([k for k in backbone if 'num_batches' not in k])
    mrla = len([k for k in mrla_entries(model) if 'num_batches' not in k])
    assert mrla > 0
    assert logged[0] == (
        f'MRLAResNet: loaded {entries} of {entries} backbone entries from '
        f"{path} (keys under 'backbone.'); MRLA: {mrla} of {mrla} entries "
        'of 8 branches')
    assert logged[1] == ('MRLAResNet: ignored 2 checkpoint entries outside '
                         'the backbone: head.fc.weight, head.fc.bias')


def test_det_checkpoint_loads_into_cls_backbone(tmp_path, logged):
    """The other way round, deep stem included."""
    weights = randomize(
        MRLAResNet(mrla_cfg=BASE, deep_stem=True, **SMALL).state_dict())
    path = tmp_path / 'bare.pth'
    torch.save(weights, path)
    model = MRLAClsResNet(mrla_cfg=BASE, deep_stem=True,
                          init_cfg=pretrained(path, prefix='backbone'),
                          **SMALL)
    model.init_weights()
    assert_loaded(model, weights, {v: k for k, v in DET_STEM.items()})
    assert "(bare keys, none under 'backbone.')" in logged[0]


@pytest.mark.parametrize('fmt', ['mmdet', 'mmpretrain'])
def test_converter_output_loads(tmp_path, fmt):
    authors = R.random_resnet_state_dict('light', seed=3)
    converted, _ = convert(authors, fmt=fmt)
    path = tmp_path / 'converted.pth'
    torch.save(dict(state_dict=converted, meta=dict(format=fmt)), path)
    model = det_backbone(pretrained(path), dict(type='MRLALight'),
                         depth=50, stem_channels=64, base_channels=64)
    backbone = {k[len('backbone.'):] if fmt == 'mmpretrain' else k: v
                for k, v in converted.items()}
    assert_loaded(model, backbone)


def test_published_classifier_loads(tmp_path):
    state = classifier_state()
    src = tmp_path / 'iter_100.pth'
    torch.save(dict(meta=dict(iter=100), state_dict=state,
                    optimizer=dict(state={}, param_groups=[])), src)
    info = publish_checkpoint(str(src), str(tmp_path / 'r18-mrlal_in1k.pth'))
    assert osp.basename(info['path']).startswith('r18-mrlal_in1k-')
    model = det_backbone(pretrained(info['path']))
    assert_loaded(model, {k[len('backbone.'):]: v for k, v in state.items()
                          if k.startswith('backbone.')})


def torchvision_stages(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def test_resnet_without_mrla_starts_branches_as_identity(
        tmp_path, monkeypatch, logged):
    """torchvision://resnet18 (read from the local torch cache): the MRLA
    backbone computes exactly torchvision's ResNet-18, in eval and train
    mode; the MRLA layers keep their own initialisation."""
    net = torchvision.models.resnet18()
    net.load_state_dict(randomize(net.state_dict()))
    # Running statistics of real activations keep eval outputs O(1).
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        net(torch.randn(8, 3, 64, 64))
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    # The file mmengine's torchvision://resnet18 names.
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(net.state_dict(), cache / url.split('/')[-1])
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))

    # The MRLA layers start as in the default initialisation.
    models = []
    for init_cfg in (None, pretrained('torchvision://resnet18')):
        torch.manual_seed(0)
        models.append(MRLAResNet(depth=18, out_indices=(0, 1, 2, 3),
                                 norm_eval=False, init_cfg=init_cfg))
        models[-1].init_weights()
    fresh, model = models
    assert 'loaded 100 of 164 backbone entries' in logged[0]
    assert logged[0].endswith('MRLA: 0 of 64 entries of 8 branches')
    assert logged[1].startswith('MRLAResNet: torchvision://resnet18 holds '
                                'no MRLA weights')
    assert logged[2] == ('MRLAResNet: ignored 2 checkpoint entries outside '
                         'the backbone: fc.weight, fc.bias')
    for name, value in model.state_dict().items():
        if '.bn_mrla.' in name and name.endswith(('weight', 'bias')):
            assert not value.any(), name
        elif '.mrla.' in name:
            assert torch.equal(value, fresh.state_dict()[name]), name
    x = torch.randn(2, 3, 64, 64)
    for training in (False, True):
        net.train(training)
        model.train(training)
        with torch.no_grad():
            for ours, ref in zip(model(x), torchvision_stages(net, x)):
                torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # The branches are live: with their norm at 1 the outputs differ.
    model.eval()
    model.layer4[1].bn_mrla.weight.data.fill_(1)
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x)[3], torchvision_stages(net, x)[3])


def test_default_init_keeps_the_branch_norms():
    model = MRLAResNet(mrla_cfg=LIGHT, **SMALL)
    model.init_weights()
    assert all(b.bn_mrla.weight.eq(1).all() for b in model.layer2)


def save_backbone(path, mrla_cfg=LIGHT, **kwargs):
    weights = MRLAResNet(mrla_cfg=mrla_cfg, **{**SMALL, **kwargs}).state_dict()
    torch.save(dict(state_dict=weights), path)
    return path


def deit_classifier(path):
    arch = dict(embed_dims=32, num_layers=2, num_heads=2,
                feedforward_channels=64)
    model = build_classifier(
        backbone=dict(type='MRLAVisionTransformer', arch=arch, img_size=32,
                      patch_size=16),
        head=dict(type='VisionTransformerClsHead', num_classes=4,
                  in_channels=32))
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


@pytest.mark.parametrize('make,backbone,message', [
    # MRLA-light and MRLA-base share every key but lambda_t.
    (lambda p: save_backbone(p, LIGHT), dict(mrla_cfg=BASE),
     "8 checkpoint key(s) not in the backbone, first "
     "'layer1.0.mrla.lambda_t' (checkpoint (16,))\n"
     '  the checkpoint is MRLA-light (lambda_t), the backbone MRLA-base'),
    (lambda p: save_backbone(p, BASE), dict(mrla_cfg=LIGHT),
     "8 backbone key(s) not in the checkpoint, first "
     "'layer1.0.mrla.lambda_t' (backbone (16,))\n"
     '  the checkpoint is MRLA-base (no lambda_t), the backbone MRLA-light'),
    (lambda p: save_backbone(p, LIGHT, depth=50, base_channels=8),
     dict(depth=101, base_channels=8),
     "backbone key(s) not in the checkpoint, first 'layer3.6.conv1.weight' "
     '(backbone (32, 128, 1, 1))'),
    (lambda p: save_backbone(p, LIGHT, depth=50, base_channels=8),
     dict(depth=101, base_channels=8),
     'blocks per stage: checkpoint (3, 4, 6, 3), backbone (3, 4, 23, 3)'),
    # Another width: every MRLA key is there, with other shapes.
    (lambda p: save_backbone(p, LIGHT, base_channels=32), dict(),
     "shape mismatch(es), first 'layer1.0.conv1.weight': checkpoint "
     '(32, 16, 3, 3), backbone (16, 16, 3, 3)'),
    (deit_classifier, dict(),
     "backbone key(s) not in the checkpoint, first 'conv1.weight'"),
])
def test_wrong_architecture_fails_naming_the_key(tmp_path, make, backbone,
                                                  message):
    path = make(tmp_path / 'other.pth')
    model = MRLAResNet(**{**SMALL, 'mrla_cfg': LIGHT, **backbone},
                       init_cfg=pretrained(path))
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    assert message in str(error.value)
    assert 'nothing was loaded' in str(error.value)


def test_partial_mrla_is_an_error_and_nothing_is_loaded(tmp_path):
    weights = randomize(MRLAResNet(mrla_cfg=LIGHT, **SMALL).state_dict())
    for key in [k for k in weights if k.startswith('layer3.1.bn_mrla.')]:
        del weights[key]
    path = tmp_path / 'partial.pth'
    torch.save(weights, path)
    model = MRLAResNet(mrla_cfg=LIGHT, **SMALL)
    model.init_weights()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
            CheckpointError,
            match=r"4 backbone key\(s\) not in the checkpoint, first "
            r"'layer3.1.bn_mrla.weight' \(backbone \(64,\)\)"):
        pretrained_init.load_pretrained_backbone(model, str(path))
    assert all(torch.equal(v, before[k])
               for k, v in model.state_dict().items())


@pytest.mark.parametrize('prefix', ['backbone.', None])
def test_classifier_without_prefix_and_bare_state_dict(tmp_path, logged,
                                                       prefix):
    """Keys without 'backbone.' (and a classifier head) load as the
    backbone's; a classifier's 'backbone.' keys load without a prefix."""
    state = classifier_state()
    bare = {k.split('.', 1)[1] if k.startswith('backbone.') else k: v
            for k, v in state.items()}
    torch.save(bare, tmp_path / 'bare.pth')
    torch.save(dict(state_dict=state), tmp_path / 'cls.pth')
    backbone = {k: v for k, v in bare.items() if not k.startswith('head.')}
    for name in ('bare.pth', 'cls.pth'):
        model = det_backbone(pretrained(tmp_path / name, prefix))
        assert_loaded(model, backbone)
    assert ('MRLAResNet: ignored 2 checkpoint entries outside the backbone: '
            'head.fc.weight, head.fc.bias') in logged


def test_foreign_files(tmp_path):
    torch.save(dict(state_dict=dict(encoder=torch.zeros(3))),
               tmp_path / 'other.pth')
    with pytest.raises(CheckpointError,
                       match=r"none of its 1 keys is a backbone key: "
                       r"expected keys such as 'conv1.weight', bare or "
                       r"under 'backbone.'; its keys begin \['encoder'\]"):
        det_backbone(pretrained(tmp_path / 'other.pth'))
    torch.save(dict(epoch=3), tmp_path / 'meta.pth')
    with pytest.raises(CheckpointError, match='holds no state dict'):
        det_backbone(pretrained(tmp_path / 'meta.pth'))


@pytest.mark.parametrize('cls', [MRLAResNet, MRLAClsResNet])
def test_missing_file_fails_at_construction(tmp_path, cls):
    path = 'checkpoints/resnet50_mrlal_in1k_mmdet.pth'
    with pytest.raises(FileNotFoundError) as error:
        cls(depth=50, init_cfg=pretrained(path))
    message = str(error.value)
    assert message.startswith(
        f"model.backbone.init_cfg.checkpoint='{path}': no such file")
    assert ('python tools/train.py configs/mrla_cls/'
            'resnet50-mrlal_8xb32_in1k.py') in message
    assert ('python tools/model_converters/mrla_official_to_openmmlab.py '
            f'r50_mrlal_77.75.pth.tar {path}') in message
    assert ('--cfg-options model.backbone.init_cfg.checkpoint='
            'torchvision://resnet50') in message
    with pytest.raises(FileNotFoundError) as error:
        cls(depth=50, deep_stem=True, mrla_cfg=dict(type='MRLABase'),
            init_cfg=pretrained(path))
    message = str(error.value)
    assert 'configs/mrla_cls/resnet50-mrlab_8xb32_in1k.py' in message
    assert 'Only an ImageNet checkpoint of the same deep-stem' in message
    assert 'torchvision://' not in message
    # URLs are read when the weights are initialised.
    cls(depth=18, init_cfg=pretrained('torchvision://resnet18'))


class _Detector(torch.nn.Module):
    """A model holding an MRLA backbone under ``backbone.``, as a detector
    does; what ``load_from``, ``--resume`` and ``test.py`` load into."""

    def __init__(self, mrla_cfg, **kwargs):
        super().__init__()
        self.backbone = MRLAResNet(mrla_cfg=mrla_cfg, **{**SMALL, **kwargs})
        self.head = torch.nn.Linear(2, 2)


@pytest.mark.parametrize('source,target,message', [
    (dict(mrla_cfg=LIGHT), dict(mrla_cfg=BASE),
     'the checkpoint is MRLA-light (lambda_t), the backbone MRLA-base'),
    (dict(mrla_cfg=BASE), dict(mrla_cfg=LIGHT),
     'the checkpoint is MRLA-base (no lambda_t), the backbone MRLA-light'),
    (dict(mrla_cfg=LIGHT), dict(mrla_cfg=LIGHT, depth=34),
     'blocks per stage: checkpoint (2, 2, 2, 2), backbone (3, 4, 6, 3)'),
    (dict(mrla_cfg=None), dict(mrla_cfg=LIGHT, depth=34),
     'blocks per stage: checkpoint (2, 2, 2, 2), backbone (3, 4, 6, 3)'),
])
def test_mmengine_load_of_another_architecture_fails(tmp_path, source,
                                                     target, message):
    """mmengine's non-strict ``load_checkpoint`` (``load_from``, resume,
    ``test.py``) into an MRLA backbone: any architecture mismatch fails
    before a weight is used; a checkpoint of the same architecture loads."""
    from mmengine.runner import load_checkpoint
    path = tmp_path / 'detector.pth'
    torch.save(dict(state_dict=_Detector(**source).state_dict()), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(_Detector(**target), str(path))
    assert "entries under 'backbone.' do not fit MRLAResNet" in str(
        error.value)
    assert message in str(error.value)
    same = _Detector(**source)
    load_checkpoint(same, str(path), strict=True)
    saved = torch.load(path)['state_dict']
    assert all(torch.equal(v, saved[k])
               for k, v in same.state_dict().items())


def test_mmengine_load_without_mrla_warns(tmp_path, logged):
    """A ResNet checkpoint without MRLA loads into the MRLA backbone of the
    same depth with only the MRLA entries missing, and says so."""
    from mmengine.runner import load_checkpoint
    path = tmp_path / 'plain.pth'
    plain = _Detector(mrla_cfg=None).state_dict()
    torch.save(dict(state_dict=plain), path)
    model = _Detector(mrla_cfg=LIGHT)
    load_checkpoint(model, str(path))
    assert all(torch.equal(v, model.state_dict()[k])
               for k, v in plain.items())
    assert any("hold no MRLA weights" in line for line in logged)

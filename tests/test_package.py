import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mrla_mm
from mrla_mm.registry import CLS_MODELS, DET_MODELS


def test_version():
    assert isinstance(mrla_mm.__version__, str)
    assert mrla_mm.version_info[:2] == tuple(
        int(x) for x in mrla_mm.__version__.split('.')[:2])


@pytest.mark.parametrize('name', ['MRLALight', 'MRLABase'])
def test_layers_in_both_registries(name):
    assert DET_MODELS.get(name) is CLS_MODELS.get(name)
    assert DET_MODELS.get(name) is getattr(mrla_mm.models, name)


def test_backbones_in_their_registries():
    from mmdet.models.backbones import ResNet as DetResNet
    from mmpretrain.models.backbones import ResNet as ClsResNet
    assert issubclass(DET_MODELS.get('MRLAResNet'), DetResNet)
    assert issubclass(DET_MODELS.get('MRLAResNeXt'), DetResNet)
    assert issubclass(CLS_MODELS.get('MRLAResNet'), ClsResNet)
    assert DET_MODELS.get('MRLAResNet') is not CLS_MODELS.get('MRLAResNet')


OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmpretrain')


def _run_python(code):
    out = subprocess.run([sys.executable, '-c', code],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_ops_import_with_torch_alone():
    """mrla_mm.ops on a machine with torch alone (the GPU box): OpenMMLab
    is installed here, so a meta-path finder refuses it the way a missing
    package would, and none of it may end up imported."""
    code = f"""
import sys

BLOCKED = {OPENMMLAB!r}
refused = []


class RefuseOpenMMLab:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            refused.append(name)
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
        return None


sys.meta_path.insert(0, RefuseOpenMMLab())
import mrla_mm.ops as ops
print(ops.adaptive_kernel_size(2048))
print(sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED))
print(sorted(m for m in sys.modules if m.startswith('mrla_mm.')
             and not m.startswith('mrla_mm.ops')))
print(sorted(set(refused)))
try:
    import mrla_mm.registry
except ImportError as e:
    print(e.name)
"""
    lines = _run_python(code).splitlines()
    assert lines[0] == '7'
    # Nothing of OpenMMLab got imported, nor the OpenMMLab half of the
    # package (the import of the ops did not even reach the registries).
    assert lines[1] == '[]'
    assert lines[2] == "['mrla_mm.version']"
    # The package asked for mmengine only, and took no for an answer.
    assert lines[3] == "['mmengine']"
    # The OpenMMLab half itself says what is missing.
    assert lines[4] == 'mmdet'


def test_custom_imports_registers_everything_in_a_fresh_process(tmp_path):
    """A config's ``custom_imports=['mrla_mm']`` is all a fresh process
    needs: every module registered where both codebases' configs and
    runners look them up."""
    path = tmp_path / 'cfg.py'
    path.write_text(
        "custom_imports = dict(imports=['mrla_mm'], "
        'allow_failed_imports=False)\n')
    code = f"""
from mmengine.config import Config
Config.fromfile({str(path)!r})
from mmdet.registry import MODELS as D, OPTIM_WRAPPERS as DO
from mmpretrain.registry import MODELS as C, OPTIM_WRAPPERS as CO
for registry, names in (
        (D, ['MRLALight', 'MRLABase', 'MRLAResNet', 'MRLAResNeXt']),
        (C, ['MRLALight', 'MRLABase', 'MRLAResNet', 'MRLAClsResNet',
             'MRLAVisionTransformer']),
        (DO, ['CPUAmpOptimWrapper']), (CO, ['CPUAmpOptimWrapper'])):
    for name in names:
        print(registry.scope, name, registry.get(name).__name__)
"""
    lines = _run_python(code).splitlines()
    assert lines == [
        'mmdet MRLALight MRLALight', 'mmdet MRLABase MRLABase',
        'mmdet MRLAResNet MRLAResNet', 'mmdet MRLAResNeXt MRLAResNeXt',
        'mmpretrain MRLALight MRLALight', 'mmpretrain MRLABase MRLABase',
        'mmpretrain MRLAResNet MRLAClsResNet',
        'mmpretrain MRLAClsResNet MRLAClsResNet',
        'mmpretrain MRLAVisionTransformer MRLAVisionTransformer',
        'mmdet CPUAmpOptimWrapper CPUAmpOptimWrapper',
        'mmpretrain CPUAmpOptimWrapper CPUAmpOptimWrapper'
    ]


DET_CFG = """
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor',
                           mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                           pad_size_divisor=32),
    backbone=dict(type='MRLAResNet', depth=18, out_indices=(1, 2, 3),
                  mrla_cfg=dict(type='MRLALight', dim_per_head=16)),
    neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=32,
              start_level=0, add_extra_convs='on_input', num_outs=3),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
        stacked_convs=1,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16, 32]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[.0, .0, .0, .0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))
"""

CLS_CFG = """
custom_imports = dict(imports=['mrla_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='MRLAResNet', depth=18,
                  mrla_cfg=dict(type='MRLABase')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=5, in_channels=512))
"""


def _build(cfg_text, tmp_path, scope, registry):
    path = tmp_path / 'cfg.py'
    path.write_text(cfg_text)
    # Config.fromfile honours custom_imports: the import registers mrla_mm.
    cfg = Config.fromfile(str(path))
    init_default_scope(scope)
    return registry.build(cfg.model)


def test_custom_imports_mmdet_config(tmp_path):
    from mmdet.models.backbones.resnet import ResNet
    model = _build(DET_CFG, tmp_path, 'mmdet', DET_MODELS)
    assert isinstance(model.backbone, ResNet)
    assert type(model.backbone).__name__ == 'MRLAResNet'
    feats = model.extract_feat(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 32, 32]


def test_custom_imports_mmpretrain_config(tmp_path):
    model = _build(CLS_CFG, tmp_path, 'mmpretrain', CLS_MODELS)
    model.eval()
    logits = model(torch.rand(2, 3, 32, 32), mode='tensor')
    assert logits.shape == (2, 5)
    assert any('mrla' in n for n, _ in model.named_parameters())


def _pins(name):
    import os.path as osp
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                    'requirements', name)
    pins = {}
    for line in open(path):
        line = line.split('#', 1)[0].strip()
        if '==' in line:
            pkg, version = line.split('==')
            pins[pkg] = version
    return pins


@pytest.mark.parametrize('pkg,version', sorted(_pins('runtime.txt').items()))
def test_installed_versions_match_pins(pkg, version):
    """The environment is the measured stack; a failed or skipped install
    step shows up here rather than as an odd error later."""
    from importlib.metadata import version as installed
    assert installed(pkg).split('+')[0] == version


def test_mmcv_compiled_ops():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]

import os.path as osp
import subprocess
import sys

import pytest
import torch.nn as nn

from mrla_mm.analysis import model_complexity
from mrla_mm.models import MRLAResNet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class _Classifier(nn.Module):
    """The authors' ImageNet model: backbone, global pool, 1000-way fc."""

    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = MRLAResNet(50, out_indices=(3, ), **kwargs)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[0].mean((2, 3)))


@pytest.fixture(scope='module')
def counts():
    return {
        name: model_complexity(_Classifier(**kw), (224, 224))
        for name, kw in [('plain', dict(mrla_cfg=None)),
                         ('light', dict(mrla_cfg=dict(type='MRLALight'))),
                         ('base', dict(mrla_cfg=dict(type='MRLABase'),
                                       deep_stem=True))]
    }


def test_resnet50_reference_counts(counts):
    # MRLA.md, mmengine's counter on the authors' models.
    assert counts['plain']['params'] == 25_557_032
    assert abs(counts['plain']['flops'] / 1e9 - 4.112) < 0.001
    assert counts['light']['params'] == 25_738_452
    assert counts['base']['params'] == 25_742_580


def test_base_flops_count_the_readout(counts):
    # The authors' base model, deep stem included, counts 4.433 G.
    assert abs(counts['base']['flops'] / 1e9 - 4.433) < 0.001


def test_light_counts(counts):
    assert abs(counts['light']['flops'] / 1e9 - 4.178) < 0.001
    assert counts['light']['params'] - counts['plain']['params'] == 181_420
    delta = (counts['light']['flops'] - counts['plain']['flops']) / 1e9
    assert abs(delta - 0.066) <= 0.005


def test_get_flops_tool(tmp_path):
    cfg = tmp_path / 'backbone_cfg.py'
    cfg.write_text(
        "custom_imports = dict(imports=['mrla_mm'], "
        'allow_failed_imports=False)\n'
        "default_scope = 'mmpretrain'\n"
        "model = dict(type='ImageClassifier', backbone=dict(type="
        "'MRLAResNet', depth=18), neck=dict(type='GlobalAveragePooling'), "
        "head=dict(type='LinearClsHead', num_classes=10, in_channels=512))\n")
    out = subprocess.run(
        [sys.executable, 'tools/analysis/get_flops.py', str(cfg), '--part',
         'backbone', '--shape', '64', '96'],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'input 1x3x64x96' in out.stdout
    params = int(out.stdout.split('params: ')[1].split()[0].replace(',', ''))
    model = MRLAResNet(18)
    assert params == sum(p.numel() for p in model.parameters())

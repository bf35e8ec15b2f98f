"""model-index.yml and the metafiles: every entry's config exists and builds.

The models are built without ``init_weights``, so the pretrained backbone
checkpoints the configs name are not needed.
"""
import glob
import os.path as osp

import pytest
import yaml
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mrla_mm  # noqa: F401
from mrla_mm.checkpoint.integrity import HASH_SUFFIX
from mrla_mm.models import skip_backbone_pretrained

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Config folders that are not model-zoo families; in a family folder,
# configs named '*demo*' (small runs on synthetic or folder data) are not
# model-zoo entries either.
NOT_INDEXED = {'demo', '_base_'}
TASKS = {
    'Object Detection', 'Instance Segmentation', 'Image Classification'
}
DATASETS = {'COCO': 'COCO', 'ImageNet-1k': 'ImageNet-1k'}


def load_yaml(path):
    with open(osp.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def index():
    return load_yaml('model-index.yml')['Import']


def all_models():
    models = []
    for metafile in index():
        models += [(metafile, m) for m in load_yaml(metafile)['Models']]
    return models


MODELS = all_models()


def test_every_family_and_config_is_indexed():
    imports = index()
    assert len(imports) == len(set(imports))
    families = sorted(
        osp.basename(d) for d in glob.glob(osp.join(ROOT, 'configs', '*'))
        if osp.isdir(d) and osp.basename(d) not in NOT_INDEXED)
    assert sorted(imports) == [
        f'configs/{f}/metafile.yml' for f in families
    ]
    for metafile in imports:
        folder = osp.dirname(metafile)
        configs = sorted(
            osp.relpath(p, ROOT)
            for p in glob.glob(osp.join(ROOT, folder, '*.py'))
            if 'demo' not in osp.basename(p))
        listed = sorted(m['Config'] for m in load_yaml(metafile)['Models'])
        assert listed == configs, metafile


def test_collections():
    names = []
    for metafile in index():
        data = load_yaml(metafile)
        assert set(data) == {'Collections', 'Models'}, metafile
        for c in data['Collections']:
            names.append(c['Name'])
            assert c['Metadata']['Training Data'] in DATASETS
            assert c['Metadata']['Architecture'][0] == 'MRLA'
            paper = c['Paper']
            assert paper['URL'] == 'https://arxiv.org/abs/2302.03985'
            # The paper's numbers are quoted as the paper's.
            assert "The paper's claim" in paper['Reported']
            assert osp.isfile(osp.join(ROOT, c['README']))
        used = {m['In Collection'] for m in data['Models']}
        assert used == {c['Name'] for c in data['Collections']}, metafile
    assert len(names) == len(set(names))
    assert len({m['Name'] for _, m in MODELS}) == len(MODELS)


def build_model(cfg):
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS as registry
    else:
        from mmdet.registry import MODELS as registry
    # Counting parameters needs no weights (nor the ImageNet file).
    skip_backbone_pretrained(cfg.model)
    return registry.build(cfg.model)


def epochs(cfg):
    dataset = cfg.train_dataloader.dataset
    times = dataset.times if dataset.type == 'RepeatDataset' else 1
    return cfg.train_cfg.max_epochs * times


@pytest.mark.parametrize(
    'metafile,model', MODELS, ids=[m['Name'] for _, m in MODELS])
def test_model_entry_matches_its_config(metafile, model):
    assert set(model) <= {
        'Name', 'In Collection', 'Config', 'Metadata', 'Results', 'Weights',
        'Note'
    }
    config = model['Config']
    assert osp.dirname(config) == osp.dirname(metafile)
    assert osp.isfile(osp.join(ROOT, config)), config
    assert model['Name'] == osp.splitext(osp.basename(config))[0]
    cfg = Config.fromfile(osp.join(ROOT, config))
    meta = model['Metadata']
    assert meta['Training Data'] in DATASETS
    assert meta['Epochs'] == epochs(cfg)
    assert meta['Batch Size'] == cfg.auto_scale_lr.base_batch_size
    init_cfg = cfg.model.backbone.get('init_cfg')
    pretrained = init_cfg.checkpoint if isinstance(
        init_cfg, dict) and init_cfg.type == 'Pretrained' else None
    assert meta.get('Pretrained') == pretrained
    for result in model['Results']:
        assert result['Task'] in TASKS
        assert result['Dataset'] == meta['Training Data']
    if model['Weights'] is None:
        # Nothing trained: no numbers may appear as results.
        assert model['Note'].startswith('Not yet trained')
        assert all(set(r) == {'Task', 'Dataset'} for r in model['Results'])
    else:
        assert HASH_SUFFIX.search(model['Weights']), model['Weights']
        assert all(r['Metrics'] for r in model['Results'])

    built = build_model(cfg)
    assert 'MRLA' in type(built.backbone).__name__
    assert built.backbone.mrla_cfg['type'] in ('MRLALight', 'MRLABase')
    assert meta['Parameters'] == sum(p.numel() for p in built.parameters())


@pytest.mark.parametrize('mrla', ['mrlal', 'mrlab'])
def test_flops_are_reproducible(mrla):
    """Re-measure the cheapest entry of each MRLA type that lists FLOPs
    (DeiT-tiny; the ResNets take minutes, tests/test_complexity.py
    checks ResNet-50's)."""
    from mrla_mm.analysis import model_complexity
    listed = [m for _, m in MODELS
              if 'FLOPs' in m['Metadata'] and f'-{mrla}_' in m['Name']]
    assert listed
    model = min(listed, key=lambda m: m['Metadata']['FLOPs'])
    built = build_model(Config.fromfile(osp.join(ROOT, model['Config'])))
    info = model_complexity(built, (224, 224))
    assert info['flops'] == model['Metadata']['FLOPs'], model['Name']
    assert info['params'] == model['Metadata']['Parameters']

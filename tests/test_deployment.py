"""ONNX export of MRLA models and their parity in onnxruntime.

Small models at small inputs (docs/deployment.md has the full-size
figures): MRLA-light and MRLA-base ResNets and a DeiT-tiny-sized MRLA ViT
through the TorchScript exporter, a ResNet through the dynamo exporter,
and the demo MRLA-light RetinaNet, NMS included, against mmdet's own
predict on demo dataset images; then what must not export.
"""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

onnx = pytest.importorskip(
    'onnx', reason='onnx is not installed (pip install -e .[deploy])')
pytest.importorskip(
    'onnxruntime',
    reason='onnxruntime is not installed (pip install -e .[deploy])')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import mrla_mm  # noqa: E402,F401
from mrla_mm.deployment import (  # noqa: E402
    DenseDetectorExport,
    ExportError,
    build_export_target,
    custom_operators,
    export_onnx,
    max_rel_error,
    predict_parity,
    run_onnxruntime,
)
from mrla_mm.models import MRLAResNet, MRLAVisionTransformer  # noqa: E402
from mrla_mm.ops.ext_loader import load_ext  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETINANET = osp.join(ROOT, 'configs', 'demo',
                     'retinanet_r18-mrlal_fpn_demo.py')
MASK_RCNN = osp.join(ROOT, 'configs', 'demo',
                     'mask-rcnn_r18-mrlal_fpn_demo.py')
TOLERANCE = 1e-4


def randomize_norms(model):
    """Eval-mode BatchNorms that are not the identity, so that folding
    them (the compiled path) matters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def export_and_check(target, path, shapes, **kwargs):
    """Export ``target``, then the worst error against PyTorch over the
    inputs of ``shapes`` (the export's own input first)."""
    export_onnx(target.module, target.inputs, path,
                input_names=target.input_names,
                output_names=target.output_names,
                dynamic_axes=target.dynamic_axes, **kwargs)
    assert custom_operators(path) == []
    errors = []
    for i, shape in enumerate(shapes):
        x = target.inputs[0] if i == 0 else torch.randn(*shape)
        with torch.no_grad():
            expected = target.module(x)
        errors.append(max_rel_error(run_onnxruntime(path, [x]), expected))
    print(f'{osp.basename(path)}: {osp.getsize(path) / 2**20:.2f} MiB, '
          f'max relative errors {["%.1e" % e for e in errors]}')
    return max(errors)


def small_resnet(mrla):
    model = MRLAResNet(
        18, base_channels=32, stem_channels=32, mrla_cfg=dict(type=mrla),
        out_indices=(0, 1, 2, 3))
    randomize_norms(model)
    model.eval()
    return model


@pytest.mark.parametrize('mrla', ['MRLALight', 'MRLABase'])
def test_resnet_exports_with_free_batch_and_size(tmp_path, mrla):
    target = build_export_target(
        small_resnet(mrla), 'backbone', (64, 64), batch=2, dynamic=True)
    err = export_and_check(target, str(tmp_path / f'{mrla}.onnx'),
                           [None, (3, 3, 96, 80)])
    assert err <= TOLERANCE


@pytest.mark.skipif(load_ext() is None,
                    reason='the compiled MRLA ops are not built')
def test_export_ignores_compiled_backend(tmp_path, monkeypatch):
    """With the kernels forced on, PyTorch runs them and the export still
    takes the composition."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    target = build_export_target(small_resnet('MRLALight'), 'backbone',
                                 (64, 64))
    err = export_and_check(target, str(tmp_path / 'compiled.onnx'), [None])
    assert err <= TOLERANCE


def test_resnet_exports_with_dynamo(tmp_path):
    model = MRLAResNet(
        18, base_channels=32, stem_channels=32, num_stages=2,
        strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
        mrla_cfg=dict(type='MRLALight'))
    randomize_norms(model)
    model.eval()
    target = build_export_target(model, 'backbone', (64, 64), batch=2,
                                 dynamic=True)
    err = export_and_check(target, str(tmp_path / 'dynamo.onnx'),
                           [None, (3, 3, 48, 80)], dynamo=True)
    assert err <= TOLERANCE


@pytest.mark.parametrize('mrla', ['MRLALight', 'MRLABase'])
def test_deit_tiny_exports(tmp_path, mrla):
    """DeiT-tiny's width (192, 3 heads) and position grid (224 / 16) with
    6 of its 12 layers (two MRLA-base groups), at 64x64 and, with the
    position embedding interpolation in the graph, free batch and size."""
    arch = dict(embed_dims=192, num_layers=6, num_heads=3,
                feedforward_channels=768)
    model = MRLAVisionTransformer(arch=arch, mrla_cfg=dict(type=mrla))
    model.eval()
    target = build_export_target(model, 'backbone', (64, 64), batch=2,
                                 dynamic=True)
    err = export_and_check(target, str(tmp_path / f'deit_{mrla}.onnx'),
                           [None, (1, 3, 96, 80)])
    assert err <= TOLERANCE


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    subprocess.run([
        sys.executable, 'tools/misc/make_demo_dataset.py',
        str(root), '--num-train', '1', '--num-val', '3'
    ], cwd=ROOT, check=True, capture_output=True)
    return str(root) + '/'


def build_detector(path, **test_cfg):
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    cfg.model.get('test_cfg', {}).update(test_cfg)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model, cfg


def test_retinanet_matches_mmdet_predict(tmp_path, demo_data):
    """Same detections as mmdet's predict on demo images, scores within
    1e-4. Random weights; the classifier's init is widened so that
    scores spread over (0.3, 0.5) instead of sitting at the prior 0.01."""
    from mmdet.registry import DATASETS
    model, cfg = build_detector(RETINANET, score_thr=0.3)
    torch.nn.init.normal_(model.bbox_head.retina_cls.weight, std=0.5)
    torch.nn.init.constant_(model.bbox_head.retina_cls.bias, -3.)
    model.eval()
    cfg.test_dataloader.dataset.data_root = demo_data
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    items = [dataset[i] for i in range(len(dataset))]
    path = str(tmp_path / 'retinanet.onnx')
    export_onnx(DenseDetectorExport(model), [torch.randn(1, 3, 128, 128)],
                path, input_names=['input'],
                output_names=['boxes', 'scores', 'labels'], dynamo=True)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert 'NonMaxSuppression' in ops and custom_operators(path) == []
    rows = predict_parity(model, path, items)
    print(f'retinanet.onnx {osp.getsize(path) / 2**20:.2f} MiB; per image '
          '(detections, unpaired, max score diff, max box diff px):', rows)
    for count, unpaired, score_err, box_err in rows:
        assert count >= 5
        assert unpaired == 0
        assert score_err <= 1e-4 and box_err <= 1e-2


def test_existing_out_is_kept_without_force(tmp_path):
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'keep')
    target = build_export_target(small_resnet('MRLALight'), 'backbone',
                                 (32, 32))
    with pytest.raises(FileExistsError, match='--force'):
        export_onnx(target.module, target.inputs, str(out),
                    input_names=['input'], output_names=target.output_names)
    assert out.read_bytes() == b'keep'
    tool = load_tool()
    with pytest.raises(SystemExit, match='exists; pass --force'):
        tool.main([RETINANET, str(out)])
    assert out.read_bytes() == b'keep'
    export_onnx(target.module, target.inputs, str(out),
                input_names=['input'], output_names=target.output_names,
                force=True)
    assert custom_operators(str(out)) == []


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'export_onnx_tool', osp.join(ROOT, 'tools', 'deployment',
                                     'export_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_custom_op_part_names_its_module(tmp_path):
    """A deformable convolution exports as mmcv's custom operator, which
    onnxruntime lacks: the export fails naming the block, and writes
    nothing at OUT."""
    model = MRLAResNet(
        50, base_channels=16, stem_channels=16, out_indices=(3, ),
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, False, False, True))
    model.eval()
    out = tmp_path / 'dcn.onnx'
    with pytest.raises(ExportError,
                       match=r'layer4\.0 \(MRLABottleneck\).*'
                       r'mmcv::MMCVModulatedDeformConv2d'):
        export_onnx(model, [torch.randn(1, 3, 64, 64)], str(out),
                    input_names=['input'], output_names=['out'])
    assert os.listdir(tmp_path) == []


def test_two_stage_detector_is_refused_with_reason():
    model, _ = build_detector(MASK_RCNN)
    with pytest.raises(ExportError, match=r'roi_head \(StandardRoIHead\)'):
        build_export_target(model, 'model', (128, 128))


def test_failing_forward_names_the_module(tmp_path):
    model = small_resnet('MRLALight')
    block = model.layer2[0]

    def broken(*args, **kwargs):
        raise RuntimeError('no ONNX path')

    block.mrla.forward = broken
    out = tmp_path / 'broken.onnx'
    with pytest.raises(ExportError, match=r'layer2\.0\.mrla \(MRLALight\)'):
        export_onnx(model, [torch.randn(1, 3, 32, 32)], str(out),
                    input_names=['input'], output_names=['o0', 'o1', 'o2',
                                                         'o3'])
    assert os.listdir(tmp_path) == []

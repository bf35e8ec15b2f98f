"""Training checkpoints open with torch's safe loader everywhere.

A demo-scale training checkpoint (tools/train.py, one epoch of the tiny
demo config) is opened with ``weights_only=True`` by mmdet's own tools, by
``init_detector``, by the visualiser, the converter and the publisher, with
no switch that turns safe loading off. Files holding anything else are
refused with the global named.
"""
import glob
import os.path as osp
import pickle
import subprocess
import sys

import mmdet
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint

import mrla_mm  # noqa: F401  allow-lists mmengine's checkpoint classes
from mrla_mm.checkpoint.safe_loading import (
    mmengine_checkpoint_globals,
    torch_defaults_only,
)
from test_det_tools import (  # noqa: F401  data_root is a fixture
    DEMO,
    ROOT,
    data_root,
    run_tool,
    tiny_config,
    train_cmd,
)

MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
# One training iteration per epoch and no validation: enough for a
# checkpoint of everything mmengine saves.
ONE_ITER_EPOCHS = """
train_dataloader['dataset']['indices'] = 2
train_cfg = dict(max_epochs={epochs}, val_interval=100)
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root):  # noqa: F811
    tmp = tmp_path_factory.mktemp('safe_loading')
    config = tiny_config(tmp, data_root, epochs=1,
                         extra=ONE_ITER_EPOCHS.format(epochs=1))
    work_dir = tmp / 'work'
    run_tool(train_cmd(config, work_dir))
    return dict(tmp=tmp, config=config, ckpt=str(work_dir / 'epoch_1.pth'),
                data_root=data_root)


def allowed_names():
    return {
        g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
        for g in mmengine_checkpoint_globals()
    }


def test_training_checkpoint_loads_with_weights_only(trained):
    with torch_defaults_only():
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(
            trained['ckpt']))
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(trained['ckpt'])
    # What torch refuses by default: the message hub's buffers, numpy.
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in needed
    assert needed <= allowed_names(), needed - allowed_names()
    ckpt = torch.load(trained['ckpt'], weights_only=True)
    assert (ckpt['meta']['epoch'], ckpt['meta']['iter']) == (1, 1)
    hub = MessageHub.get_instance('safe_loading_test')
    hub.load_state_dict(ckpt['message_hub'])
    loss = hub.get_scalar('train/loss')
    assert isinstance(loss, HistoryBuffer)
    assert loss.data[0].dtype == 'float64' and len(loss.data[0]) == 1
    assert loss.mean() == pytest.approx(loss.data[0].mean())


class Foreign:
    """An object no allow-list names."""


class HistoryBufferInit:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


@pytest.mark.parametrize('obj,reason', [
    (Foreign(), f'GLOBAL {__name__}.Foreign was not an allowed global'),
    (HistoryBufferInit(), "refused getattr(<class 'mmengine.logging."
     "history_buffer.HistoryBuffer'>, '__init__')"),
])
def test_anything_else_is_refused_with_the_reason(obj, reason, tmp_path):
    path = str(tmp_path / 'foreign.pth')
    torch.save(dict(state_dict={'w': torch.zeros(1)}, meta=dict(x=obj)),
               path)
    with pytest.raises(pickle.UnpicklingError) as error:
        _load_checkpoint(path, map_location='cpu')
    assert reason in str(error.value)


def test_mmdet_test_py(trained):
    proc = run_tool([
        sys.executable,
        osp.join(MMDET_TOOLS, 'test.py'), trained['config'], trained['ckpt'],
        '--work-dir',
        str(trained['tmp'] / 'mmdet_test')
    ])
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr


def test_mmdet_train_py_resume(trained):
    config = tiny_config(trained['tmp'], trained['data_root'], epochs=2,
                         extra=ONE_ITER_EPOCHS.format(epochs=2))
    proc = run_tool([
        sys.executable,
        osp.join(MMDET_TOOLS, 'train.py'), config, '--work-dir',
        str(trained['tmp'] / 'resumed'), '--resume', trained['ckpt']
    ])
    assert 'resumed epoch: 1, iter: 1' in proc.stdout + proc.stderr
    final = torch.load(trained['tmp'] / 'resumed' / 'epoch_2.pth')
    assert final['meta']['iter'] == 2
    # The optimizer went on from the checkpoint's state (AdamW's step).
    steps = {float(s['step']) for s in final['optimizer']['state'].values()}
    assert steps == {2.0}


def test_load_from(trained):
    """What mmdet's train.py does with ``load_from``, before training."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(trained['config'])
    cfg.work_dir = str(trained['tmp'] / 'fine_tuned')
    cfg.load_from = trained['ckpt']
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    state_dict = torch.load(trained['ckpt'])['state_dict']
    loaded = runner.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())


def test_init_detector(trained):
    from mmdet.apis import init_detector
    model = init_detector(trained['config'], trained['ckpt'], device='cpu')
    state_dict = torch.load(trained['ckpt'])['state_dict']
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())
    assert model.dataset_meta['classes'] == ('circle', 'square', 'triangle',
                                             'star')


def test_visualiser_as_documented(trained, tmp_path):
    work_dir = osp.dirname(trained['ckpt'])
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        last = f.read().strip()
    images = sorted(glob.glob(trained['data_root'] + 'val/*.png'))[:1]
    out = tmp_path / 'attn'
    proc = run_tool([
        sys.executable, 'tools/analysis/visualize_layer_attention.py', DEMO,
        last, *images, '--out-dir', str(out)
    ])
    assert 'MRLA-light: gate' in proc.stdout
    assert (out / 'mrla_light_gates.png').is_file()


def test_converter_reads_a_training_checkpoint(trained):
    from mrla_mm.converters import (
        CheckpointError,
        detect_arch,
        load_reference_checkpoint,
    )
    weights = load_reference_checkpoint(trained['ckpt'])
    assert set(weights) == set(torch.load(trained['ckpt'])['state_dict'])
    # It is already in our layout, which the converter says.
    with pytest.raises(CheckpointError, match='not an MRLA checkpoint'):
        detect_arch(weights)


def test_publisher_reads_it_safely_and_the_release_loads_without_mrla_mm(
        trained):
    from mrla_mm.checkpoint.publish import publish_checkpoint
    info = publish_checkpoint(trained['ckpt'],
                              str(trained['tmp'] / 'release' / 'demo.pth'))
    # A process that never imported mrla_mm (nothing allow-listed).
    subprocess.run([
        sys.executable, '-c', 'import sys, torch; '
        "ckpt = torch.load(sys.argv[1]); assert 'sys' not in ckpt; "
        "assert 'mrla_mm' not in sys.modules", info['path']
    ], cwd=ROOT, check=True)


def test_exporter_reads_a_training_checkpoint(trained, tmp_path):
    onnx = pytest.importorskip(
        'onnx', reason='onnx is not installed (pip install -e .[deploy])')
    pytest.importorskip(
        'onnxruntime',
        reason='onnxruntime is not installed (pip install -e .[deploy])')
    out = tmp_path / 'backbone.onnx'
    proc = run_tool([
        sys.executable, 'tools/deployment/export_onnx.py', trained['config'],
        trained['ckpt'], str(out), '--part', 'backbone', '--shape', '64', '64',
        '--exporter', 'torchscript'
    ])
    assert 'max relative error' in proc.stdout
    # The trained weights are in the file: lambda_t is exported as it is.
    lam = torch.load(trained['ckpt'])['state_dict'][
        'backbone.layer1.0.mrla.lambda_t'].flatten()
    initializers = [
        torch.from_numpy(onnx.numpy_helper.to_array(t).copy()).flatten()
        for t in onnx.load(str(out)).graph.initializer
    ]
    assert any(t.shape == lam.shape and torch.equal(t, lam)
               for t in initializers)

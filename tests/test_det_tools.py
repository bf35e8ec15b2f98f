"""tools/train.py, tools/test.py and the launch scripts, end to end; and
mmdet's and mim's own training launchers.

Each test runs the real command lines on a tiny version of the demo config
(a few 128x128 synthetic images, batch 2), on the CPU.
"""
import glob
import json
import math
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_r18-mrlal_fpn_demo.py')
NUM_TRAIN, NUM_VAL, BATCH = 8, 4, 2
ITERS_PER_EPOCH = NUM_TRAIN // BATCH

TINY_CONFIG = """
_base_ = {base!r}
data_root = {data_root!r}
train_dataloader = dict(
    batch_size={batch}, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root))
val_dataloader = dict(
    batch_size={batch}, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval={epochs})
param_scheduler = [
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=1)]
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
log_processor = dict(window_size=1)
"""


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    subprocess.run([
        sys.executable, 'tools/misc/make_demo_dataset.py',
        str(root), '--num-train', str(NUM_TRAIN), '--num-val', str(NUM_VAL)
    ], cwd=ROOT, check=True, capture_output=True)
    return str(root) + '/'


def tiny_config(tmp_path, data_root, epochs, extra=''):
    path = tmp_path / f'tiny_{epochs}ep.py'
    path.write_text(TINY_CONFIG.format(
        base=DEMO, data_root=data_root, batch=BATCH, epochs=epochs) + extra)
    return str(path)


def run_tool(args, timeout=300, env=None, check=True, cwd=ROOT):
    """Run a tool (from the repository root unless ``cwd`` says otherwise);
    return the finished process."""
    proc = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def train_cmd(config, work_dir, *extra):
    return [sys.executable, 'tools/train.py', config, '--work-dir',
            str(work_dir), *extra]


def scalars(run_dir):
    """Training log records (one per iteration) of one run."""
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        return [r for r in map(json.loads, f) if 'loss' in r]


def run_dirs(work_dir):
    return sorted(d for d in glob.glob(osp.join(work_dir, '*', ''))
                  if osp.isdir(osp.join(d, 'vis_data')))


def adam_steps(ckpt):
    steps = {float(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert len(steps) == 1
    return steps.pop()


def test_resume_after_interrupt(tmp_path, data_root):
    """Kill training after a checkpoint; --resume continues from it."""
    config = tiny_config(tmp_path, data_root, epochs=4)
    work_dir = tmp_path / 'work'
    first = subprocess.Popen(
        train_cmd(config, work_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    last = work_dir / 'last_checkpoint'
    deadline = time.time() + 300
    # last_checkpoint is written once the checkpoint file is complete.
    while not (last.exists() and last.read_text().endswith('epoch_2.pth')):
        assert first.poll() is None, 'training ended before the interrupt'
        assert time.time() < deadline, 'no epoch_2 checkpoint in time'
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (work_dir / 'epoch_4.pth').exists()
    saved = torch.load(work_dir / 'epoch_2.pth', map_location='cpu',
                       weights_only=False)
    assert saved['meta']['epoch'] == 2
    assert saved['meta']['iter'] == 2 * ITERS_PER_EPOCH
    assert adam_steps(saved) == 2 * ITERS_PER_EPOCH

    resumed = run_tool(train_cmd(config, work_dir, '--resume'))
    log = resumed.stdout + resumed.stderr
    assert f'resumed epoch: 2, iter: {2 * ITERS_PER_EPOCH}' in log
    final = torch.load(work_dir / 'epoch_4.pth', map_location='cpu',
                       weights_only=False)
    assert final['meta']['epoch'] == 4
    assert final['meta']['iter'] == 4 * ITERS_PER_EPOCH
    # The optimizer state went on from the checkpoint's (AdamW's step
    # counter and moments), not from a fresh optimizer.
    assert adam_steps(final) == 4 * ITERS_PER_EPOCH

    before, after = (scalars(d) for d in run_dirs(work_dir))
    assert [r['iter'] for r in after] == list(
        range(2 * ITERS_PER_EPOCH + 1, 4 * ITERS_PER_EPOCH + 1))
    first_losses = [r['loss'] for r in before[:ITERS_PER_EPOCH]]
    resumed_losses = [r['loss'] for r in after[:ITERS_PER_EPOCH]]
    last_losses = [r['loss'] for r in before if
                   ITERS_PER_EPOCH < r['iter'] <= 2 * ITERS_PER_EPOCH]
    # A restart from scratch would repeat the first epoch's loss level.
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(resumed_losses) < 0.7 * mean(first_losses)
    assert mean(resumed_losses) < 1.3 * mean(last_losses)

    # tools/test.py on the resumed checkpoint: COCO metrics and painted
    # predictions of every val image.
    tested = run_tool([
        sys.executable, 'tools/test.py', config,
        str(work_dir / 'epoch_4.pth'), '--work-dir',
        str(tmp_path / 'test'), '--show-dir', 'vis'
    ])
    assert 'coco/bbox_mAP' in tested.stdout + tested.stderr
    painted = glob.glob(str(tmp_path / 'test' / '*' / 'vis' / '*.png'))
    assert len(painted) == NUM_VAL


def test_amp_trains_without_nan(tmp_path, data_root):
    config = tiny_config(tmp_path, data_root, epochs=2)
    work_dir = tmp_path / 'amp'
    proc = run_tool(train_cmd(config, work_dir, '--amp'))
    assert "type='CPUAmpOptimWrapper'" in proc.stdout + proc.stderr
    records = scalars(run_dirs(work_dir)[0])
    assert len(records) == 2 * ITERS_PER_EPOCH
    assert all(math.isfinite(r['loss']) for r in records)
    ckpt = torch.load(work_dir / 'epoch_2.pth', map_location='cpu',
                      weights_only=False)
    weights = ckpt['state_dict']
    assert all(torch.isfinite(w).all() for w in weights.values()
               if w.is_floating_point())
    assert all(w.dtype != torch.bfloat16 for w in weights.values())


@pytest.mark.parametrize('mrla_cfg,message', [
    ("dict(type='MRLALight', dim_per_head=48)",
     'dim_per_head=48 does not divide channels=32'),
    ("dict(type='MRLAHeavy')", "mrla_cfg['type'] must be one of"),
])
def test_wrong_mrla_argument_fails_at_build(tmp_path, data_root, mrla_cfg,
                                            message):
    config = tiny_config(
        tmp_path, data_root, epochs=1,
        extra=f'model = dict(backbone=dict(mrla_cfg={mrla_cfg}))\n')
    proc = run_tool(train_cmd(config, tmp_path / 'bad'), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    # It failed while building the model, before any iteration.
    assert 'Epoch(train)' not in proc.stdout + proc.stderr
    assert not glob.glob(str(tmp_path / 'bad' / '*.pth'))


@pytest.mark.parametrize('launcher', ['mmdet', 'mim'])
def test_mmdet_and_mim_launchers(tmp_path, data_root, launcher):
    """mmdet's own tools/train.py, as shipped inside the mmdet package, and
    ``mim train mmdet``, run from a folder outside this repository: the
    config's custom_imports bring in mrla_mm, none of our tools is needed."""
    import mmdet
    config = tiny_config(tmp_path, data_root, epochs=1)
    user_dir = tmp_path / 'elsewhere'
    user_dir.mkdir()
    mmdet_train = osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    if launcher == 'mmdet':
        cmd = [sys.executable, mmdet_train, config, '--work-dir', 'work']
    else:
        cmd = [sys.executable, '-m', 'mim', 'train', 'mmdet', config,
               '--work-dir', 'work']
    # The checkout under test, wherever mrla_mm is installed.
    path = os.pathsep.join(
        p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
    proc = run_tool(cmd, cwd=user_dir, env=dict(PYTHONPATH=path))
    log = proc.stdout + proc.stderr
    if launcher == 'mim':
        assert f'Training command is {sys.executable} {mmdet_train}' in log
    assert "type='MRLAResNet'" in log
    assert (f'Epoch(train) [1][{ITERS_PER_EPOCH}/{ITERS_PER_EPOCH}]'
            in log)
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    work_dir = user_dir / 'work'
    records = scalars(run_dirs(str(work_dir))[0])
    assert len(records) == ITERS_PER_EPOCH
    assert all(math.isfinite(r['loss']) for r in records)
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == ITERS_PER_EPOCH
    weights = ckpt['state_dict']
    assert 'backbone.layer1.0.mrla.lambda_t' in weights
    assert all(torch.isfinite(w).all() for w in weights.values()
               if w.is_floating_point())


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def test_distributed_train_and_test_on_cpu(tmp_path, data_root):
    """torchrun, 2 processes, gloo: train, checkpoint, evaluate, test."""
    config = tiny_config(tmp_path, data_root, epochs=1)
    work_dir = tmp_path / 'dist'
    env = dict(PYTHON=sys.executable, PORT=free_port(), OMP_NUM_THREADS='1')
    proc = run_tool([
        'bash', 'tools/dist_train.sh', config, '2', '--work-dir',
        str(work_dir), '--cfg-options', 'model.backbone.norm_cfg.type=SyncBN'
    ], env=env)
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log
    assert 'SyncBN cannot run on the CPU' in log
    # The distributed sampler gives each of the 2 processes half the data.
    per_rank = NUM_TRAIN // (2 * BATCH)
    assert f'Epoch(train) [1][{per_rank}/{per_rank}]' in log
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == per_rank
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])

    out = tmp_path / 'preds.pkl'
    env['PORT'] = free_port()
    run_tool([
        'bash', 'tools/dist_test.sh', config,
        str(work_dir / 'epoch_1.pth'), '2', '--work-dir',
        str(tmp_path / 'dist_test'), '--out',
        str(out)
    ], env=env)
    import pickle
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    # Both processes' results are gathered: every val image once.
    assert sorted(p['img_id'] for p in predictions) == list(
        range(1, NUM_VAL + 1))


def load_tool(name):
    """Import tools/NAME.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'mrla_tool_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_options_reach_the_config(tmp_path):
    import argparse
    train = load_tool('train')
    args = argparse.Namespace(
        config=DEMO, work_dir=None, amp=True, auto_scale_lr=True,
        resume='auto', launcher='none',
        cfg_options={'train_cfg.max_epochs': 3})
    cfg = train.build_config(args)
    assert cfg.work_dir == osp.join('./work_dirs',
                                    'mask-rcnn_r18-mrlal_fpn_demo')
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    assert cfg.auto_scale_lr.enable
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.train_cfg.max_epochs == 3
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    args.resume, args.work_dir = str(ckpt), str(tmp_path)
    cfg = train.build_config(args)
    assert cfg.load_from == str(ckpt) and cfg.work_dir == str(tmp_path)
    args.resume = str(tmp_path / 'missing.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        train.build_config(args)


def test_test_options_reach_the_config(tmp_path):
    import argparse
    test = load_tool('test')
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    args = argparse.Namespace(
        config=DEMO, checkpoint=str(ckpt), work_dir='rel_dir', out=None,
        show=False, show_dir='vis', wait_time=2, launcher='none',
        cfg_options=None)
    cfg = test.build_config(args)
    assert cfg.load_from == str(ckpt)
    assert cfg.work_dir == osp.abspath('rel_dir')
    hook = cfg.default_hooks.visualization
    assert hook.draw and hook.test_out_dir == 'vis'
    args.out = 'results.json'
    with pytest.raises(ValueError, match="'results.json'"):
        test.build_config(args)


def test_close_process_group():
    import torch.distributed as dist

    from mrla_mm.engine import close_process_group
    close_process_group()  # without a group: nothing to do
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
        world_size=1)
    try:
        close_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize('tool,argv', [
    ('train', [DEMO]),
    ('test', [DEMO, 'x.pth']),
])
def test_tools_leave_the_process_group_after_the_run(tool, argv,
                                                     monkeypatch, tmp_path):
    """A group left to the interpreter's exit can abort a finished gloo
    process ("terminate called without an active exception")."""
    module = load_tool(tool)
    calls = []

    class FakeRunner:
        test_evaluator = None

        @classmethod
        def from_cfg(cls, cfg):
            return cls()

        def train(self):
            calls.append('run')

        test = train

    monkeypatch.setattr(module, 'Runner', FakeRunner)
    monkeypatch.setattr(module, 'close_process_group',
                        lambda: calls.append('close'))
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'x.pth').write_bytes(b'')
    monkeypatch.setattr(sys, 'argv', [f'{tool}.py', *argv])
    module.main()
    assert calls == ['run', 'close']

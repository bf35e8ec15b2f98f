"""What ``tools/train.py`` and ``tools/test.py`` adapt to the machine.

mmengine and mmdet assume a GPU for mixed precision and for distributed
runs; these helpers keep both usable on a CPU-only machine, through the
same launchers (torchrun, ``--launcher pytorch``), and say what they change.
"""
import datetime
import os
import warnings

import torch
import torch.distributed as torch_dist
from mmengine.config import Config

SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'SyncBatchNorm')
AMP_FROM = ('OptimWrapper', 'AmpOptimWrapper', 'CPUAmpOptimWrapper')


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to mixed-precision training.

    With a GPU: mmengine's ``AmpOptimWrapper`` (float16, dynamic loss
    scale), as mmdet's ``--amp`` does. Without one: ``CPUAmpOptimWrapper``
    (bfloat16 autocast, no loss scale).

    Raises:
        ValueError: if the config's optimizer wrapper is not a plain or AMP
            ``OptimWrapper`` (a custom wrapper would be silently replaced).
    """
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in AMP_FROM:
        raise ValueError(f'--amp replaces optim_wrapper.type, which must be '
                         f'one of {AMP_FROM}, got {kind!r}')
    if torch.cuda.is_available():
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
        return
    if 'loss_scale' in wrapper:
        warnings.warn(f'--amp on the CPU autocasts to bfloat16, which needs '
                      f'no loss scaling: optim_wrapper.loss_scale='
                      f'{wrapper.loss_scale!r} is not used')
        wrapper.pop('loss_scale')
    wrapper.type = 'CPUAmpOptimWrapper'
    wrapper.dtype = 'bfloat16'


def _replace_sync_bn(node, path: str, replaced: list):
    """Turn every SyncBN norm config under ``node`` into BN, in place."""
    if isinstance(node, dict):
        if node.get('type') in SYNC_BN_TYPES:
            replaced.append(f'{path}: {node["type"]}')
            node['type'] = 'BN'
        for key, value in node.items():
            _replace_sync_bn(value, f'{path}.{key}', replaced)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _replace_sync_bn(value, f'{path}[{i}]', replaced)


def setup_cpu_distributed(cfg: Config) -> None:
    """Prepare ``cfg.launcher`` runs on a machine without a GPU.

    mmengine's ``init_dist`` binds every process to a CUDA device, which
    fails without one. On such a machine this function joins the process
    group itself, with the ``gloo`` backend and torchrun's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); the Runner
    then finds it initialised and goes on as usual (DDP, distributed
    samplers, collective evaluation). SyncBN cannot run on CPU tensors, so
    every SyncBN norm config becomes BN (per-process statistics), with a
    warning; DDP gets ``device_ids=None`` (a CPU module). With a GPU nothing
    changes.

    Does nothing with a GPU or with ``launcher='none'``.

    Raises:
        RuntimeError: for ``slurm`` and ``mpi`` launchers without a GPU
            (use torchrun, i.e. ``--launcher pytorch``, on CPU machines).
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(
            f'distributed runs without a GPU support --launcher pytorch '
            f'(torchrun, tools/dist_train.sh), got --launcher {launcher}')
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'nccl')
    if backend != 'gloo':
        warnings.warn(f'no GPU: the distributed backend is gloo instead of '
                      f'env_cfg.dist_cfg.backend={backend!r}')
    if 'timeout' in dist_cfg:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    replaced = []
    _replace_sync_bn(cfg.model, 'model', replaced)
    if replaced:
        warnings.warn('no GPU: SyncBN cannot run on the CPU; these norm '
                      'layers use BN (per-process batch statistics) '
                      'instead: ' + ', '.join(replaced))
    if cfg.get('sync_bn') is not None:
        warnings.warn(f'no GPU: sync_bn={cfg.sync_bn!r} is not applied '
                      f'(SyncBN cannot run on the CPU)')
        cfg.sync_bn = None
    # mmengine hands DDP device_ids=[LOCAL_RANK], which DDP refuses for a
    # CPU model; a wrapper config's own keys take precedence over that.
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('device_ids') is not None:
        raise ValueError(f'model_wrapper_cfg.device_ids must be None without '
                         f'a GPU, got {wrapper["device_ids"]!r}')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            **dist_cfg)


def close_process_group() -> None:
    """Leave the default process group, where one was joined, at the end
    of ``tools/train.py`` and ``tools/test.py``.

    mmengine's Runner leaves the group to the interpreter's exit. There
    the gloo backend's worker threads may still hold tensors, and the
    process can abort ("terminate called without an active exception")
    after its work is done, which torchrun reports as a failed run.
    PyTorch asks every process to destroy its groups before it exits.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()

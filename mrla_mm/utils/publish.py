"""Turn a training checkpoint into a model-zoo release file.

A release keeps what inference and fine-tuning need, the weights
(``state_dict``) and ``meta`` (the training config, dataset meta, epoch
and the versions below), and drops the training state mmengine saves for
resuming (optimizer, parameter schedulers, message hub, EMA copy...). It
is named ``NAME-<first 8 hex of its sha256>.pth`` as in OpenMMLab's model
zoo, which :mod:`mrla_mm.utils.checkpoint_integrity` checks on load.
"""
import importlib.metadata
import io
import os
import os.path as osp
import time
from typing import Dict, List, Optional

import torch

from .checkpoint_integrity import HASH_PREFIX_LEN, file_sha256

KEPT_KEYS = ('meta', 'state_dict')
# Packages whose versions a release records (those installed).
VERSIONED_PACKAGES = ('mmdet', 'mmpretrain', 'mmcv', 'mmengine', 'torch')


class PublishError(ValueError):
    """A checkpoint that cannot be published as it is."""


def environment_versions() -> Dict[str, str]:
    """``{'<pkg>_version': version}`` of mrla_mm and the installed stack."""
    from mrla_mm import __version__
    versions = dict(mrla_mm_version=__version__)
    for name in VERSIONED_PACKAGES:
        try:
            versions[f'{name}_version'] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def to_fp16(state_dict: Dict[str, torch.Tensor]) -> Dict:
    """Cast the floating tensors of ``state_dict`` to float16.

    Integer tensors (e.g. BN's ``num_batches_tracked``) are kept. A value
    that float16 cannot hold (overflow to inf) raises a
    :class:`PublishError` naming the tensor.
    """
    out = type(state_dict)()
    for name, value in state_dict.items():
        if value.is_floating_point() and value.dtype != torch.float16:
            half = value.to(torch.float16)
            if not torch.isfinite(half[torch.isfinite(value)]).all():
                raise PublishError(
                    f'{name} has values beyond float16 range (max |x| = '
                    f'{value.abs().max().item():.4g} > 65504): publish '
                    'without --fp16')
            value = half
        out[name] = value
    if hasattr(state_dict, '_metadata'):
        out._metadata = state_dict._metadata
    return out


def _unsafe_entries(checkpoint: Dict) -> List[str]:
    """Entries of ``meta`` that ``torch.load(weights_only=True)`` refuses."""
    bad = []
    for key, value in checkpoint.get('meta', {}).items():
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:  # torch raises several types when refusing
            bad.append(f'meta[{key!r}]')
    return bad


def release_checkpoint(checkpoint, fp16: bool = False,
                       source: Optional[str] = None) -> Dict:
    """The release content of a loaded training checkpoint.

    Args:
        checkpoint (dict): An mmengine checkpoint (``state_dict``, ``meta``,
            ``optimizer``...) or a bare state dict.
        fp16 (bool): Cast floating weights to float16. Defaults to False.
        source (str, optional): Name of the file it came from, recorded in
            ``meta['publish']``.

    Returns:
        dict: ``{'meta': ..., 'state_dict': ...}``. ``meta`` keeps every
        entry of the input's and adds the ``<pkg>_version`` entries it
        lacks (the publishing environment's) and ``publish`` (time,
        source, fp16, the removed top-level keys).
    """
    if _is_state_dict(checkpoint):
        checkpoint = dict(state_dict=checkpoint)
    if not isinstance(checkpoint, dict) or not _is_state_dict(
            checkpoint.get('state_dict')):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else []
        raise PublishError(
            "the input has no 'state_dict' of tensors (top-level keys: "
            f'{keys}): publish an mmengine checkpoint or a state dict; '
            "convert the authors' checkpoints first with "
            'tools/model_converters/mrla_to_mmdet.py')
    meta = checkpoint.get('meta') or {}
    if not isinstance(meta, dict):
        raise PublishError(
            f"checkpoint['meta'] must be a dict, got {type(meta).__name__}")
    removed = sorted(k for k in checkpoint if k not in KEPT_KEYS)
    meta = dict(meta)
    for key, version in environment_versions().items():
        meta.setdefault(key, version)
    meta['publish'] = dict(
        time=time.strftime('%Y%m%d_%H%M%S'),
        source=source,
        fp16=fp16,
        removed_keys=removed)
    state_dict = checkpoint['state_dict']
    if fp16:
        state_dict = to_fp16(state_dict)
    return dict(meta=meta, state_dict=state_dict)


def published_name(out_file: str, sha256: str) -> str:
    """``OUT-<first 8 hex>.pth`` (a ``.pth`` ending of ``out_file`` dropped).
    """
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    return f'{stem}-{sha256[:HASH_PREFIX_LEN]}.pth'


def publish_checkpoint(in_file: str, out_file: str,
                       fp16: bool = False) -> Dict:
    """Write the release file of ``in_file``, named after its hash.

    Only publish checkpoints you trust: the input is unpickled in full
    (mmengine's training checkpoints hold log buffers and numpy objects).
    The release itself loads with ``torch.load(weights_only=True)``.

    Args:
        in_file (str): A training checkpoint (or a saved state dict).
        out_file (str): Path of the release without its hash, e.g.
            ``work_dirs/mask-rcnn_r50-mrlal_fpn_1x_coco.pth``.
        fp16 (bool): Store floating weights as float16 (half the size).

    Returns:
        dict: ``path`` (the written file), ``sha256``, ``size`` (bytes),
        ``removed_keys`` and ``num_tensors``.
    """
    in_file, out_file = osp.expanduser(in_file), osp.expanduser(out_file)
    if not osp.isfile(in_file):
        raise FileNotFoundError(f'in_file {in_file!r} does not exist')
    checkpoint = torch.load(in_file, map_location='cpu', weights_only=False)
    release = release_checkpoint(checkpoint, fp16, osp.basename(in_file))
    unsafe = _unsafe_entries(release)
    if unsafe:
        raise PublishError(
            f'{", ".join(unsafe)} of {in_file} hold objects that '
            'torch.load(weights_only=True) refuses, so the release would '
            'not load safely; remove or simplify them before publishing')
    out_dir = osp.dirname(osp.abspath(out_file))
    os.makedirs(out_dir, exist_ok=True)
    tmp_file = osp.join(out_dir, f'.{osp.basename(out_file)}.tmp')
    try:
        torch.save(release, tmp_file)
        sha256 = file_sha256(tmp_file)
        path = published_name(out_file, sha256)
        os.replace(tmp_file, path)
    finally:
        if osp.exists(tmp_file):
            os.remove(tmp_file)
    return dict(
        path=path,
        sha256=sha256,
        size=osp.getsize(path),
        removed_keys=release['meta']['publish']['removed_keys'],
        num_tensors=len(release['state_dict']))

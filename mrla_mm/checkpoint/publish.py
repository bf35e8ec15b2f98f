"""Turn a training checkpoint into a model-zoo release file.

A release keeps what inference and fine-tuning need, the weights
(``state_dict``) and ``meta`` (the training config, dataset meta, epoch
and the versions below), and drops the training state mmengine saves for
resuming (optimizer, parameter schedulers, message hub, EMA copy...). It
is named ``NAME-<first hex digits of its sha256>.pth`` as in OpenMMLab's
model zoo, which :mod:`mrla_mm.checkpoint.integrity` checks on load.
Its bytes depend on the input and the installed versions only (no clock),
so publishing the same checkpoint again gives the same file and name.
"""
import hashlib
import importlib.metadata
import io
import os
import os.path as osp
import pickle
import re
from typing import Dict, List, Optional

import torch

from .integrity import HASH_PREFIX_LEN, HASH_SUFFIX
from .safe_loading import torch_defaults_only

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
    """Entries of ``meta`` that torch's safe loader refuses without the
    allow-list of mrla_mm, each with the globals it names."""
    bad = []
    for key, value in checkpoint.get('meta', {}).items():
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        with torch_defaults_only():
            names = torch.serialization.get_unsafe_globals_in_checkpoint(
                buffer)
        if names:
            bad.append(f'meta[{key!r}] ({", ".join(sorted(names))})')
    return bad


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The reason torch's safe loader gave, without its generic advice."""
    match = re.search(r'WeightsUnpickler error: ([^\n]*)', str(error))
    reason = match.group(1) if match else str(error)
    return reason.split(' Please use')[0]


def read_checkpoint(in_file: str) -> Dict:
    """Load ``in_file`` with torch's safe loader (``weights_only=True``).

    Raises:
        FileNotFoundError: ``in_file`` does not exist.
        PublishError: It is not a readable PyTorch checkpoint (empty, not
            written by ``torch.save``, truncated or damaged) or holds
            objects the safe loader refuses; the message says which.
    """
    if not osp.isfile(in_file):
        raise FileNotFoundError(f'in_file {in_file!r} does not exist')
    size = osp.getsize(in_file)
    if size == 0:
        raise PublishError(f'{in_file} is not a checkpoint: it is empty')
    with open(in_file, 'rb') as f:
        head = f.read(16)
    # torch.save writes a zip archive; before torch 1.6, a pickle stream
    # (protocol 2) that starts with a magic number.
    if not head.startswith((b'PK\x03\x04', b'\x80\x02')):
        raise PublishError(
            f'{in_file} is not a PyTorch checkpoint: it is neither the zip '
            'archive torch.save writes nor the older torch.save pickle (it '
            f'begins with {head!r})')
    try:
        return torch.load(in_file, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'WeightsUnpickler error' not in str(e):
            raise PublishError(
                f'{in_file} is not a readable checkpoint: it begins like a '
                f'torch.save file but its content does not unpickle '
                f'({size} bytes; {e})') from e
        raise PublishError(
            f'{in_file} is not a checkpoint of weights and mmengine '
            "training state: torch's safe loader refuses it: "
            f'{_refusal_reason(e)}') from e
    except Exception as e:  # torch's readers raise several types
        # The first sentence: torch appends generic advice.
        cause = str(e).split('. ')[0]
        raise PublishError(
            f'{in_file} is not a complete checkpoint: it begins like a '
            f'torch.save file but cannot be read, so it is truncated or '
            f'damaged ({size} bytes; {type(e).__name__}: {cause})') from e


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
        lacks (the publishing environment's) and ``publish`` (source,
        fp16, the removed top-level keys).
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
            'tools/model_converters/mrla_official_to_openmmlab.py')
    meta = checkpoint.get('meta') or {}
    if not isinstance(meta, dict):
        raise PublishError(
            f"checkpoint['meta'] must be a dict, got {type(meta).__name__}")
    removed = sorted(k for k in checkpoint if k not in KEPT_KEYS)
    meta = dict(meta)
    for key, version in environment_versions().items():
        meta.setdefault(key, version)
    meta['publish'] = dict(
        source=source,
        fp16=fp16,
        removed_keys=removed)
    state_dict = checkpoint['state_dict']
    if fp16:
        state_dict = to_fp16(state_dict)
    return dict(meta=meta, state_dict=state_dict)


def published_name(out_file: str, sha256: str) -> str:
    """``OUT-<h>.pth`` (a ``.pth`` ending of ``out_file`` dropped).

    ``<h>`` is the shortest prefix of ``sha256``, at least 8 digits long,
    that holds a letter: a name that cannot be mistaken for a date or a
    counter (see :mod:`mrla_mm.checkpoint.integrity`). torch.hub's
    hash check takes prefixes of any length.
    """
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    for length in range(HASH_PREFIX_LEN, len(sha256) + 1):
        name = f'{stem}-{sha256[:length]}.pth'
        if HASH_SUFFIX.search(name):
            return name
    raise PublishError(f'sha256 {sha256!r} has no hex letter a-f')


def _make_folders(folder: str) -> List[str]:
    """Create ``folder`` and its missing parents; return the folders
    created, deepest first, so that a failed publish can remove them."""
    missing = []
    while not osp.isdir(folder):
        missing.append(folder)
        folder = osp.dirname(folder)
    for i, new in enumerate(reversed(missing)):
        try:
            os.mkdir(new)
        except OSError as e:
            for made in missing[len(missing) - i:]:
                os.rmdir(made)
            raise PublishError(f'cannot create the folder {new}: {e}') from e
    return missing


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` completely or not at all.

    The bytes go to a hidden temporary file next to ``path``, which is
    renamed to ``path`` once written and synced.

    Raises:
        PublishError: The write failed (e.g. the disk is full); the
            temporary file is removed and ``path`` is left as it was.
    """
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp')
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise PublishError(
            f'could not write {path} ({len(data)} bytes): {e}; nothing was '
            'written') from e
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def publish_checkpoint(in_file: str, out_file: str,
                       fp16: bool = False) -> Dict:
    """Write the release file of ``in_file``, named after its hash.

    The input is read with torch's safe loader (``weights_only=True``,
    with the allow-list of :mod:`mrla_mm.checkpoint.safe_loading`); the
    release loads with it even where mrla_mm is not imported.

    Args:
        in_file (str): A training checkpoint (or a saved state dict).
        out_file (str): Path of the release without its hash, e.g.
            ``work_dirs/mask-rcnn_r50-mrlal_fpn_1x_coco.pth``.
        fp16 (bool): Store floating weights as float16 (half the size).

    Returns:
        dict: ``path`` (the written file), ``sha256``, ``size`` (bytes),
        ``removed_keys`` and ``num_tensors``.

    Raises:
        PublishError: The input is not a checkpoint that can be published
            (see :func:`read_checkpoint`), or the release cannot be
            written; no file is left behind.
    """
    in_file, out_file = osp.expanduser(in_file), osp.expanduser(out_file)
    checkpoint = read_checkpoint(in_file)
    release = release_checkpoint(checkpoint, fp16, osp.basename(in_file))
    unsafe = _unsafe_entries(release)
    if unsafe:
        raise PublishError(
            f'{", ".join(unsafe)} of {in_file} hold objects that '
            "torch's safe loader refuses without mrla_mm, so the release "
            'would not load safely everywhere; remove or simplify them '
            'before publishing')
    # Serialised in memory: the bytes are hashed for the name before the
    # file exists, and are the same for the same release wherever written.
    buffer = io.BytesIO()
    torch.save(release, buffer)
    data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    path = published_name(out_file, sha256)
    created = _make_folders(osp.dirname(osp.abspath(path)))
    try:
        write_atomically(path, data)
    except PublishError:
        for folder in created:
            os.rmdir(folder)
        raise
    return dict(
        path=path,
        sha256=sha256,
        size=len(data),
        removed_keys=release['meta']['publish']['removed_keys'],
        num_tensors=len(release['state_dict']))

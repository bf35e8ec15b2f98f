"""Convert the authors' MRLA checkpoints to mrla_mm's key layout.

The authors' ImageNet scripts save ``{'state_dict': ...}`` (ResNet, keys
with ``module.`` after DDP) or ``{'model': ..., 'model_ema': ...}`` (DeiT);
see ``docs/model_zoo.md``. The converted weights load with ``strict=True``
into :class:`MRLAResNet` (mmdet or mmpretrain) or, with ``fmt='mmpretrain'``,
into a whole mmpretrain ``ImageClassifier``.
"""
import argparse
import re
from collections import OrderedDict
from typing import Dict, Tuple

import torch
from torch import Tensor

ARCHS = ('resnet_light', 'resnet_base', 'deit_light', 'deit_base')
FORMATS = ('mmdet', 'mmpretrain')

# The authors' layer attention names -> ours, inside one block.
_MRLA_KEYS = {
    'mrla.mrla.Wq.weight': 'mrla.query_conv.weight',
    'mrla.mrla.Wk.weight': 'mrla.key_conv.weight',
    'mrla.mrla.Wv.weight': 'mrla.value_conv.weight',
    'mrla.lambda_t': 'mrla.lambda_t',
}
_RESNET_BLOCK = re.compile(r'^(layer[1-4]|stages\.[0-3])\.(\d+)\.(.+)$')


class CheckpointError(ValueError):
    """A file that is not, or not entirely, an MRLA checkpoint."""


def load_reference_checkpoint(path: str, ema: bool = False) -> Dict:
    """Read the authors' checkpoint at ``path`` into a plain state dict.

    Args:
        path (str): ``checkpoint.pth.tar`` / ``model_best.pth.tar`` (ResNet)
            or ``checkpoint.pth`` / ``best_checkpoint.pth`` (DeiT), or a bare
            state dict.
        ema (bool): Take DeiT's ``model_ema`` weights. Defaults to False.

    Returns:
        dict: The weights, ``module.`` prefixes removed.
    """
    try:
        # DeiT checkpoints hold the training arguments as a Namespace.
        torch.serialization.add_safe_globals([argparse.Namespace])
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f'cannot read {path!r} as a PyTorch checkpoint: {e}') from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path!r} holds a {type(ckpt).__name__}, not '
                              'a checkpoint dict')
    key = 'model_ema' if ema else None
    if key is None:
        key = next((k for k in ('state_dict', 'model') if k in ckpt), None)
    if key is not None:
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(
                f'{path!r} has no weights under {key!r} (top-level keys: '
                f'{sorted(ckpt)})')
        ckpt = ckpt[key]
    if not ckpt or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f'{path!r} is not an MRLA checkpoint: expected a state dict, or '
            "one under 'state_dict' / 'model', got top-level keys "
            f'{sorted(ckpt)[:8]}')
    return OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in ckpt.items())


def detect_arch(state_dict: Dict) -> str:
    """Tell which of :data:`ARCHS` an authors' state dict belongs to."""
    keys = set(state_dict)
    if 'layer1.0.mrla.mrla.Wq.weight' in keys:
        return 'resnet_light'
    if 'stages.0.0.mrla.mrla.Wq.weight' in keys:
        return 'resnet_base'
    if 'blocks.0.mrla.mrla.Wq.weight' in keys:
        return ('deit_light'
                if 'blocks.0.mrla.lambda_t' in keys else 'deit_base')
    raise CheckpointError(
        'not an MRLA checkpoint: none of layer1.0.mrla.mrla.Wq.weight '
        '(ResNet light), stages.0.0.mrla.mrla.Wq.weight (ResNet base) or '
        'blocks.0.mrla.mrla.Wq.weight (DeiT) is among its '
        f'{len(keys)} keys, e.g. {sorted(keys)[:5]}')


def resnet_depth(state_dict: Dict) -> int:
    """ResNet depth from the number of blocks in the third stage."""
    blocks = {
        int(m.group(2))
        for m in map(_RESNET_BLOCK.match, state_dict)
        if m and m.group(1) in ('layer3', 'stages.2')
    }
    depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
    if depth is None:
        raise CheckpointError(
            f'cannot tell the ResNet depth: stage 3 has {len(blocks)} '
            'bottlenecks, expected 6 (R-50), 23 (R-101) or 36 (R-152)')
    return depth


def _deep_stem_names(fmt: str) -> Dict[str, str]:
    """The authors' deep stem (``conv1.{0,1,3,4,6}``, ``bn1``) in mmdet's
    ``stem.{0,1,3,4,6,7}`` or in mmpretrain's ConvModules."""
    if fmt == 'mmdet':
        return {'conv1.0': 'stem.0', 'conv1.1': 'stem.1', 'conv1.3': 'stem.3',
                'conv1.4': 'stem.4', 'conv1.6': 'stem.6', 'bn1': 'stem.7'}
    return {'conv1.0': 'stem.0.conv', 'conv1.1': 'stem.0.bn',
            'conv1.3': 'stem.1.conv', 'conv1.4': 'stem.1.bn',
            'conv1.6': 'stem.2.conv', 'bn1': 'stem.2.bn'}


def convert_resnet(state_dict: Dict, fmt: str = 'mmdet',
                   keep_head: bool = False) -> Dict:
    """Rename an authors' light or base ResNet to :class:`MRLAResNet` keys.

    Stages ``stages.S`` become ``layer{S+1}``, the deep stem of the base
    model becomes the backbone's ``stem``, the MRLA layers' ``Wq/Wk/Wv``
    become ``query_conv/key_conv/value_conv`` and ``lambda_t`` [C,1,1]
    becomes [C]. ``fc`` is dropped unless ``keep_head`` (mmpretrain only).
    """
    stem = _deep_stem_names(fmt) if 'conv1.0.weight' in state_dict else {}
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('fc.'):
            if keep_head:
                out['head.' + key] = value
            continue
        m = _RESNET_BLOCK.match(key)
        if m:
            stage, idx, rest = m.groups()
            if stage.startswith('stages.'):
                stage = f'layer{int(stage[-1]) + 1}'
            rest = _MRLA_KEYS.get(rest, rest)
            if rest == 'mrla.lambda_t':
                value = value.reshape(-1)
            key = f'{stage}.{idx}.{rest}'
        else:
            module, leaf = key.rsplit('.', 1)
            key = f'{stem.get(module, module)}.{leaf}'
        out[key if fmt == 'mmdet' else 'backbone.' + key] = value
    return out


def convert(state_dict: Dict,
            arch: str = None,
            fmt: str = 'mmdet',
            keep_head: bool = False) -> Tuple[Dict, str]:
    """Convert an authors' state dict; returns it and the arch it is.

    Args:
        state_dict (dict): From :func:`load_reference_checkpoint`.
        arch (str, optional): One of :data:`ARCHS`; detected when None, and
            checked against the keys when given.
        fmt (str): ``'mmdet'`` (bare backbone keys, for a backbone's
            ``init_cfg``) or ``'mmpretrain'`` (``backbone.``/``head.``
            keys of an ``ImageClassifier``).
        keep_head (bool): Keep the classifier (mmpretrain format only).
    """
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    if keep_head and fmt != 'mmpretrain':
        raise ValueError('keep_head=True needs fmt="mmpretrain": an mmdet '
                         'backbone has no classifier')
    found = detect_arch(state_dict)
    if arch is not None and arch != found:
        if arch not in ARCHS:
            raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
        raise CheckpointError(
            f'arch={arch!r} was asked for but the checkpoint is {found!r}')
    if found.startswith('resnet'):
        return convert_resnet(state_dict, fmt, keep_head), found
    from .deit_convert import convert_deit
    return convert_deit(state_dict, found, keep_head, fmt), found


def check_state_dict(state_dict: Dict, model: torch.nn.Module) -> None:
    """Require ``state_dict`` to fit ``model`` exactly, naming what doesn't.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f'the converted weights do not fit {type(model).__name__}: '
            f'missing {missing[:6]}{" ..." if len(missing) > 6 else ""}, '
            f'unexpected {unexpected[:6]}'
            f'{" ..." if len(unexpected) > 6 else ""}')
    for k, v in state_dict.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f'shape mismatch at {k!r}: checkpoint {tuple(v.shape)}, '
                f'model {tuple(expected[k].shape)}')

"""Read the authors' MRLA checkpoints, tell their architecture and convert
them to mrla_mm's key layout.

The authors' ImageNet scripts save ``{'state_dict': ...}`` (ResNet, keys
with ``module.`` after DDP) or ``{'model': ..., 'model_ema': ...}`` (DeiT);
see ``docs/model_zoo.md``. The converted weights load with ``strict=True``
into :class:`MRLAResNet` (mmdet or mmpretrain) or, with ``fmt='mmpretrain'``,
into a whole mmpretrain ``ImageClassifier``.
"""
import argparse
from collections import OrderedDict
from typing import Dict, Tuple

import torch
from torch import Tensor

from .deit import convert_deit
from .key_rules import CheckpointError, check_format
from .resnet import convert_resnet

ARCHS = ('resnet_light', 'resnet_base', 'deit_light', 'deit_base')


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
    check_format(fmt, keep_head)
    found = detect_arch(state_dict)
    if arch is not None and arch != found:
        if arch not in ARCHS:
            raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
        raise CheckpointError(
            f'arch={arch!r} was asked for but the checkpoint is {found!r}')
    if found.startswith('resnet'):
        return convert_resnet(state_dict, fmt, keep_head), found
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

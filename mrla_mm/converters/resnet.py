"""Convert the authors' MRLA ResNets to :class:`MRLAResNet` keys.

The authors' light ResNets use torchvision's names (``layer1`` ...); their
base ResNets name the stages ``stages.0`` ... and have a deep stem
(``conv1.{0,1,3,4,6}``, ``bn1``).
"""
import re
from collections import OrderedDict
from typing import Dict

from .key_rules import (
    MRLA_LAYER_KEYS,
    CheckpointError,
    backbone_prefix,
    check_format,
)

RESNET_BLOCK = re.compile(r'^(layer[1-4]|stages\.[0-3])\.(\d+)\.(.+)$')


def resnet_depth(state_dict: Dict) -> int:
    """ResNet depth from the number of blocks in the third stage."""
    blocks = {
        int(m.group(2))
        for m in map(RESNET_BLOCK.match, state_dict)
        if m and m.group(1) in ('layer3', 'stages.2')
    }
    depth = {6: 50, 23: 101, 36: 152}.get(len(blocks))
    if depth is None:
        raise CheckpointError(
            f'cannot tell the ResNet depth: stage 3 has {len(blocks)} '
            'bottlenecks, expected 6 (R-50), 23 (R-101) or 36 (R-152)')
    return depth


def deep_stem_names(fmt: str) -> Dict[str, str]:
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

    Args:
        state_dict (dict): The authors' weights.
        fmt (str): One of :data:`~.key_rules.FORMATS`.
        keep_head (bool): Keep the classifier as ``head.fc``.

    Returns:
        dict: The renamed weights.
    """
    check_format(fmt, keep_head)
    stem = deep_stem_names(fmt) if 'conv1.0.weight' in state_dict else {}
    prefix = backbone_prefix(fmt)
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('fc.'):
            if keep_head:
                out['head.' + key] = value
            continue
        m = RESNET_BLOCK.match(key)
        if m:
            stage, idx, rest = m.groups()
            if stage.startswith('stages.'):
                stage = f'layer{int(stage[-1]) + 1}'
            rest = MRLA_LAYER_KEYS.get(rest, rest)
            if rest == 'mrla.lambda_t':
                value = value.reshape(-1)
            key = f'{stage}.{idx}.{rest}'
        else:
            module, leaf = key.rsplit('.', 1)
            key = f'{stem.get(module, module)}.{leaf}'
        out[prefix + key] = value
    return out

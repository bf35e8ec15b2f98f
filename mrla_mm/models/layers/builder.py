from functools import lru_cache
from typing import Dict, Optional, Union

from mmengine.logging import print_log

from mrla_mm.registry import DET_MODELS
from .mrla_base import MRLABase
from .mrla_light import MRLALight

# The types mrla_cfg may name; their classes come from the registry.
MRLA_LAYER_TYPES = ('MRLALight', 'MRLABase')


def build_mrla_layer(cfg: Optional[dict],
                     channels: int,
                     default_dim_per_head: Optional[Dict[str, int]] = None,
                     **defaults) -> Optional[Union[MRLALight, MRLABase]]:
    """Build the MRLA layer a backbone's ``mrla_cfg`` asks for.

    Args:
        cfg (dict, optional): ``dict(type='MRLALight' | 'MRLABase', ...)``
            with the layer's arguments except ``channels``. None builds
            nothing (a plain backbone).
        channels (int): Channels of the feature map the layer attends over.
        default_dim_per_head (dict[str, int], optional): The paper's
            ``dim_per_head`` per layer type for the host backbone. When
            ``cfg`` gives neither ``dim_per_head`` nor ``num_heads``, the
            layer gets the heads :func:`default_num_heads` chooses for
            that target: the paper's wherever it divides ``channels``.
        **defaults: Further arguments ``cfg`` may override.

    Returns:
        MRLALight | MRLABase | None: built by mmdet's ``MODELS`` registry
        (the layers are registered in mmpretrain's too).
    """
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'mrla_cfg must be None or a dict with a "type" key, '
                        f'got {cfg!r}')
    args = dict(cfg)
    layer_type = args.pop('type')
    name = layer_type.__name__ if isinstance(layer_type, type) else layer_type
    if name not in MRLA_LAYER_TYPES or (isinstance(layer_type, type)
                                        and DET_MODELS.get(name)
                                        is not layer_type):
        raise ValueError(f"mrla_cfg['type'] must be one of "
                         f'{MRLA_LAYER_TYPES}, got {layer_type!r}')
    if 'channels' in args:
        raise ValueError(
            f"mrla_cfg must not set 'channels' (got {args['channels']!r}): "
            'the backbone sets it for every block')
    if ('dim_per_head' not in args and 'num_heads' not in args
            and default_dim_per_head):
        args['num_heads'] = default_num_heads(name, channels,
                                              default_dim_per_head[name])
    return DET_MODELS.build(
        dict(type=name, channels=channels, **{**defaults, **args}))


def default_num_heads(layer: str, channels: int, dim_per_head: int) -> int:
    """Heads for ``channels`` when the user chose none, ``dim_per_head``
    being the paper's target.

    ``channels // dim_per_head`` where ``dim_per_head`` divides
    ``channels`` (every standard width); elsewhere the most heads that
    divide ``channels`` with at least ``dim_per_head`` channels each, one
    head when ``channels < dim_per_head`` (narrow backbones, e.g. mmdet's
    ``base_channels=1``). A choice off the paper's is logged once per
    ``(layer, channels)``.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f'channels must be a positive int, got {channels!r}')
    most = max(1, channels // dim_per_head)
    num_heads = next(h for h in range(most, 0, -1) if channels % h == 0)
    if channels % dim_per_head:
        _log_head_choice(layer, channels, dim_per_head, num_heads)
    return num_heads


@lru_cache(maxsize=None)
def _log_head_choice(layer: str, channels: int, dim_per_head: int,
                     num_heads: int) -> None:
    print_log(
        f'{layer}: the paper\'s dim_per_head={dim_per_head} does not divide '
        f'channels={channels}; using num_heads={num_heads} '
        f'(dim_per_head={channels // num_heads}). Set dim_per_head or '
        'num_heads in mrla_cfg to choose.',
        logger='current')

from typing import Dict, Optional, Union

from .mrla_base import MRLABase
from .mrla_light import MRLALight

MRLA_LAYERS = {'MRLALight': MRLALight, 'MRLABase': MRLABase}


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
        default_dim_per_head (dict[str, int], optional): ``dim_per_head``
            per layer type, used when ``cfg`` gives neither it nor
            ``num_heads`` (the paper's value for the host backbone).
        **defaults: Further arguments ``cfg`` may override.

    Returns:
        MRLALight | MRLABase | None
    """
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'mrla_cfg must be None or a dict with a "type" key, '
                        f'got {cfg!r}')
    args = dict(cfg)
    layer_type = args.pop('type')
    name = layer_type.__name__ if isinstance(layer_type, type) else layer_type
    if (layer_type not in MRLA_LAYERS.values()
            and layer_type not in MRLA_LAYERS):
        raise ValueError(f"mrla_cfg['type'] must be one of "
                         f'{tuple(MRLA_LAYERS)}, got {layer_type!r}')
    if 'channels' in args:
        raise ValueError(
            f"mrla_cfg must not set 'channels' (got {args['channels']!r}): "
            'the backbone sets it for every block')
    if ('dim_per_head' not in args and 'num_heads' not in args
            and default_dim_per_head):
        args['dim_per_head'] = default_dim_per_head[name]
    return MRLA_LAYERS[name](channels=channels, **{**defaults, **args})

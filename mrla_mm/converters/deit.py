"""Convert the authors' DeiT-MRLA weights to :class:`MRLAVisionTransformer`.

The authors' DeiT models use timm's ViT names (``blocks.i.norm1``,
``mlp.fc1``, ...); mmpretrain's :class:`VisionTransformer` names the same
tensors ``layers.i.ln1``, ``ffn.layers.0.0``, .... The MRLA module of
block ``i`` (``blocks.i.mrla``) becomes ``layers.i.mrla``, with the layer
attention's ``Wq/Wk/Wv`` renamed ``query_conv/key_conv/value_conv`` and
its ``lambda_t`` moved into the layer.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional

from .key_rules import (
    MRLA_LAYER_KEYS,
    CheckpointError,
    backbone_prefix,
    check_format,
)

DEIT_ARCHS = ('deit_light', 'deit_base')
# Self-attention heads of the DeiT widths (64 channels per head).
DEIT_NUM_HEADS = {192: 3, 384: 6, 768: 12}

# timm's names inside a block -> mmpretrain's TransformerEncoderLayer names.
_BLOCK_KEYS = {
    'norm1': 'ln1',
    'norm2': 'ln2',
    'attn.qkv': 'attn.qkv',
    'attn.proj': 'attn.proj',
    'mlp.fc1': 'ffn.layers.0.0',
    'mlp.fc2': 'ffn.layers.1',
    'mrla.normx': 'mrla.normx',
    'mrla.normo': 'mrla.normo',
}
# The MRLA layer is ``mrla.mrla`` inside our token branch.
_MRLA_LAYER_KEYS = {k: 'mrla.' + v for k, v in MRLA_LAYER_KEYS.items()}
_TOP_KEYS = {
    'cls_token': 'cls_token',
    'pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.projection.weight',
    'patch_embed.proj.bias': 'patch_embed.projection.bias',
    'norm.weight': 'ln1.weight',
    'norm.bias': 'ln1.bias',
}
_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')


def _block_key(rest: str) -> Optional[str]:
    """Our name for ``rest`` of ``blocks.i.<rest>``, None if unknown."""
    if rest in _MRLA_LAYER_KEYS:
        return _MRLA_LAYER_KEYS[rest]
    module, _, leaf = rest.rpartition('.')
    if module in _BLOCK_KEYS and leaf in ('weight', 'bias'):
        return f'{_BLOCK_KEYS[module]}.{leaf}'
    return None


def convert_deit(state_dict: Dict,
                 arch: str,
                 keep_head: bool = False,
                 fmt: str = 'mmpretrain') -> Dict:
    """Rename an authors' DeiT-MRLA state dict to mmpretrain's ViT keys.

    Args:
        state_dict (dict): The authors' weights (timm names).
        arch (str): ``'deit_light'`` or ``'deit_base'``.
        keep_head (bool): Keep the classifier as ``head.layers.head`` of a
            :class:`VisionTransformerClsHead` (mmpretrain format only).
        fmt (str): ``'mmpretrain'`` (``backbone.``/``head.`` keys of an
            ``ImageClassifier``) or ``'mmdet'`` (bare backbone keys, for a
            backbone's ``init_cfg``). Defaults to ``'mmpretrain'``.

    Returns:
        dict: The renamed weights.

    Raises:
        CheckpointError: on a key that has no place in the model (e.g. the
            distillation token of a distilled DeiT), so nothing is dropped
            silently.
    """
    if arch not in DEIT_ARCHS:
        raise ValueError(f'arch must be one of {DEIT_ARCHS}, got {arch!r}')
    check_format(fmt, keep_head)
    if arch == 'deit_base' and any(
            k.endswith(('mrla.lambda_t', 'mrla.normo.weight'))
            for k in state_dict):
        raise CheckpointError('arch=deit_base but the checkpoint has the '
                              'lambda_t / normo keys of MRLA-light')
    prefix = backbone_prefix(fmt)
    out = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        if key.startswith('head.'):
            if keep_head:
                out['head.layers.' + key] = value
            continue
        m = _BLOCK.match(key)
        new = _TOP_KEYS.get(key) if m is None else _block_key(m.group(2))
        if new is None:
            unknown.append(key)
            continue
        if m is not None:
            new = f'layers.{m.group(1)}.{new}'
        out[prefix + new] = value
    if unknown:
        raise CheckpointError(
            f'{len(unknown)} key(s) of the {arch} checkpoint have no place '
            f'in MRLAVisionTransformer: {unknown[:6]}'
            f'{" ..." if len(unknown) > 6 else ""}')
    return out


def build_deit_backbone(arch: str,
                        state_dict: Dict,
                        num_heads: Optional[int] = None,
                        **kwargs):
    """A fresh :class:`MRLAVisionTransformer` shaped like an authors' DeiT.

    Width, depth, MLP width, patch size and training image size are read
    from the weights. The self-attention heads leave no trace in them: they
    follow DeiT (3 / 6 / 12 for width 192 / 384 / 768) unless
    ``num_heads`` is given. ``dim_per_head`` (16) and the base group size
    (4) are the reference's.

    Args:
        arch (str): ``'deit_light'`` or ``'deit_base'``.
        state_dict (dict): The authors' weights (timm names).
        num_heads (int, optional): Self-attention heads.
        **kwargs: Further arguments of :class:`MRLAVisionTransformer`.
    """
    from mrla_mm.models import MRLAVisionTransformer
    if arch not in DEIT_ARCHS:
        raise ValueError(f'arch must be one of {DEIT_ARCHS}, got {arch!r}')
    try:
        embed_dims = state_dict['cls_token'].shape[-1]
        patch = state_dict['patch_embed.proj.weight'].shape[-2:]
        num_tokens = state_dict['pos_embed'].shape[1]
        ffn = state_dict['blocks.0.mlp.fc1.weight'].shape[0]
    except KeyError as e:
        raise CheckpointError(f'not a DeiT state dict: no {e}') from e
    if num_heads is None:
        if embed_dims not in DEIT_NUM_HEADS:
            raise CheckpointError(
                f'embed dim {embed_dims} is not a DeiT width '
                f'{tuple(DEIT_NUM_HEADS)}: pass num_heads')
        num_heads = DEIT_NUM_HEADS[embed_dims]
    depth = 1 + max(
        int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m)
    if 'img_size' not in kwargs:
        side = round((num_tokens - 1)**0.5)
        if side * side != num_tokens - 1:
            raise CheckpointError(
                f'pos_embed holds {num_tokens - 1} patch positions, not a '
                'square grid: pass img_size')
        kwargs['img_size'] = (side * patch[0], side * patch[1])
    return MRLAVisionTransformer(
        arch=dict(
            embed_dims=embed_dims,
            num_layers=depth,
            num_heads=num_heads,
            feedforward_channels=ffn),
        patch_size=tuple(patch),
        mrla_cfg=dict(
            type='MRLALight' if arch == 'deit_light' else 'MRLABase'),
        **kwargs)

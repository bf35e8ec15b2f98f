"""MRLA-base core: softmax readout over a per-stage key/value cache."""
from typing import Sequence

from torch import Tensor

from .mrla_math import base_combine, base_weights


def mrla_base_readout(q: Tensor, keys: Tensor, values: Sequence[Tensor],
                      num_heads: int) -> Tensor:
    """``O_g = sum_s softmax_s(q_g . k^s_g / sqrt(d)) * V^s_g``.

    Args:
        q (Tensor): query of the current layer, ``[B, C]``.
        keys (Tensor): keys of the layers in the cache, ``[B, T, C]``.
        values (Sequence[Tensor]): their ``T`` value maps, each
            ``[B, C, H, W]``, read in place.
        num_heads (int): number of heads ``G``.

    Returns:
        Tensor: ``[B, C, H, W]``.
    """
    if keys.shape[1] != len(values):
        raise ValueError(f'keys hold {keys.shape[1]} layers but values hold '
                         f'{len(values)}')
    return base_combine(base_weights(q, keys, num_heads), values)

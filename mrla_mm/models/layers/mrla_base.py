from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch import Tensor

from mrla_mm.ops import (
    advance_batch_norm,
    channel_descriptor,
    check_feature_map,
    check_kernel_size,
    check_norm_excludes_fold,
    check_value_act,
    mrla_base_batch_norm,
    mrla_base_readout,
    mrla_value_map,
    query_key,
    resolve_heads,
)
from mrla_mm.ops.checks import check_bool
from mrla_mm.registry import CLS_MODELS, DET_MODELS
from .mrla_cache import MRLACache


@DET_MODELS.register_module()
@CLS_MODELS.register_module()
class MRLABase(BaseModule):
    """MRLA-base: multi-head recurrent layer attention over a layer cache.

    Implements eq. 6 of `Cross-Layer Retrospective Retrieving via Layer
    Attention <https://arxiv.org/abs/2302.03985>`_:

    .. math::
        O^t_g = \\sum_{s \\le t} \\mathrm{softmax}_s
                (Q^t_g \\cdot K^s_g / \\sqrt{d}) \\, V^s_g

    Each call appends the layer's key and value to an :class:`MRLACache`
    shared by the layers of a group, then reads all of them out.

    Args:
        channels (int): Channels ``C`` of the input and output.
        dim_per_head (int, optional): Channels per head ``d``. Exactly one
            of ``dim_per_head`` and ``num_heads`` must be given.
        num_heads (int, optional): Number of heads ``G = C / d``.
        kernel_size (int, optional): Kernel size of the Q/K convolutions.
            Defaults to None, the adaptive ECA size.
        value_act (str): Activation after the value convolution,
            ``'identity'`` or ``'gelu'``. Defaults to ``'identity'``, as in
            the reference (ResNet and ViT).
        detach_cache (bool): Keep detached keys/values in the cache, so no
            gradient flows into earlier layers through it. Saves backward
            work; not the paper's setting. Defaults to False.
        recompute_values (bool): When the layer runs with ``norm`` in
            training, recompute the group's value maps in the backward
            from the maps they were computed from, instead of keeping them
            for the whole step: the saved maps of a ResNet-101 step drop
            from 1.62x to 1.34x of plain ResNet-101's, for up to 0.11x of
            plain's step time on the CPU (docs/benchmarks.md). Outputs and
            gradients are the same either way. Defaults to True.
        init_cfg (dict or list[dict], optional): Initialization config.
    """

    def __init__(self,
                 channels: int,
                 dim_per_head: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 kernel_size: Optional[int] = None,
                 value_act: str = 'identity',
                 detach_cache: bool = False,
                 recompute_values: bool = True,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.channels = channels
        self.num_heads, self.dim_per_head = resolve_heads(
            channels, dim_per_head, num_heads)
        self.kernel_size = check_kernel_size(kernel_size, channels)
        self.value_act = check_value_act(value_act)
        self.detach_cache = check_bool('detach_cache', detach_cache)
        self.recompute_values = check_bool('recompute_values',
                                           recompute_values)
        pad = (self.kernel_size - 1) // 2
        self.query_conv = nn.Conv1d(
            1, 1, self.kernel_size, padding=pad, bias=False)
        self.key_conv = nn.Conv1d(
            1, 1, self.kernel_size, padding=pad, bias=False)
        self.value_conv = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels, bias=False)

    def new_cache(self) -> MRLACache:
        """An empty cache for a new group, held as this layer asks."""
        return MRLACache(detach=self.detach_cache)

    def forward(self,
                x: Tensor,
                cache: MRLACache,
                descriptor: Optional[Tensor] = None,
                scale: Optional[Tensor] = None,
                shift: Optional[Tensor] = None,
                add_input: bool = False,
                norm: Optional[nn.Module] = None) -> Tensor:
        """Append this layer to ``cache`` and attend over all its layers.

        Args:
            x (Tensor): ``X^t``, ``[B, C, H, W]``.
            cache (MRLACache): The group's cache; empty at its first layer.
            descriptor (Tensor, optional): ``x``'s channel means ``[B, C]``
                when the caller has them already.
            scale (Tensor, optional): with ``shift``, an eval-mode norm
                ``[C]`` folded into the readout, which a ReLU follows.
            shift (Tensor, optional): see ``scale``.
            add_input (bool): add ``x`` to the result. Defaults to False.
            norm (nn.Module, optional): a BatchNorm module (in training or
                eval mode); makes the result ``x + relu(norm(O^t))``, with
                the readout and the norm (and with ``recompute_values`` the
                value maps) recomputed in the backward instead of stored
                (see :func:`mrla_mm.ops.mrla_base_batch_norm`). Excludes
                ``scale``, ``shift`` and ``add_input``.

        Returns:
            Tensor: ``O^t``, ``[B, C, H, W]`` (extended as ``scale``,
            ``shift`` and ``add_input`` ask, see
            :func:`mrla_mm.ops.mrla_base_readout`).
        """
        check_feature_map(x, self.channels, 'x')
        if not isinstance(cache, MRLACache):
            raise TypeError('cache must be an MRLACache, got '
                            f'{type(cache).__name__}')
        check_norm_excludes_fold(norm, scale, add_input)
        y = channel_descriptor(x) if descriptor is None else descriptor
        q, key = query_key(y, self.query_conv.weight, self.key_conv.weight)
        kernel = self.value_conv.weight
        recompute = (norm is not None and self.recompute_values
                     and torch.is_grad_enabled())
        cache.append(
            key,
            mrla_value_map(x, kernel, self.value_act),
            *((x, kernel) if recompute else ()))
        if norm is not None:
            sources, kernels = cache.value_sources() or (None, None)
            return mrla_base_batch_norm(
                x,
                q,
                cache.stacked_keys(),
                cache.values,
                self.num_heads,
                sources=sources,
                kernels=kernels,
                gradients=cache.gradients,
                value_act=self.value_act,
                **advance_batch_norm(norm))
        return mrla_base_readout(
            q,
            cache.stacked_keys(),
            cache.values,
            self.num_heads,
            scale=scale,
            shift=shift,
            residual=x if add_input else None)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_heads={self.num_heads}, '
                f'dim_per_head={self.dim_per_head}, '
                f'kernel_size={self.kernel_size}, '
                f'detach_cache={self.detach_cache}, '
                f'recompute_values={self.recompute_values}')

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
    light_gate,
    mrla_light_batch_norm,
    mrla_light_core,
    query_key,
    resolve_heads,
)
from mrla_mm.ops.checks import check_number
from mrla_mm.registry import CLS_MODELS, DET_MODELS


@DET_MODELS.register_module()
@CLS_MODELS.register_module()
class MRLALight(BaseModule):
    """MRLA-light: multi-head recurrent layer attention, linear in depth.

    Implements eq. 8 of `Cross-Layer Retrospective Retrieving via Layer
    Attention <https://arxiv.org/abs/2302.03985>`_:

    .. math::
        O^t_g = \\sigma(Q^t_g \\cdot K^t_g / \\sqrt{d}) \\, V^t_g
                + \\lambda^t \\odot O^{t-1}

    ``Q`` and ``K`` come from ECA-style 1-D convolutions over the globally
    pooled channels of ``x``; ``V`` is a depthwise 3x3 convolution of ``x``
    (followed by GELU in vision transformers).

    Args:
        channels (int): Channels ``C`` of the input and output.
        dim_per_head (int, optional): Channels per head ``d``. Exactly one
            of ``dim_per_head`` and ``num_heads`` must be given.
        num_heads (int, optional): Number of heads ``G = C / d``.
        kernel_size (int, optional): Kernel size of the Q/K convolutions.
            Defaults to None, the adaptive ECA size.
        value_act (str): Activation after the value convolution,
            ``'identity'`` (ResNet) or ``'gelu'`` (ViT). Defaults to
            ``'identity'``.
        lambda_init (float, optional): Constant initial value of lambda.
            Defaults to None: standard normal, as in the reference.
        init_cfg (dict or list[dict], optional): Initialization config.
    """

    def __init__(self,
                 channels: int,
                 dim_per_head: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 kernel_size: Optional[int] = None,
                 value_act: str = 'identity',
                 lambda_init: Optional[float] = None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.channels = channels
        self.num_heads, self.dim_per_head = resolve_heads(
            channels, dim_per_head, num_heads)
        self.kernel_size = check_kernel_size(kernel_size, channels)
        self.value_act = check_value_act(value_act)
        check_number('lambda_init', lambda_init, allow_none=True)
        pad = (self.kernel_size - 1) // 2
        self.query_conv = nn.Conv1d(
            1, 1, self.kernel_size, padding=pad, bias=False)
        self.key_conv = nn.Conv1d(
            1, 1, self.kernel_size, padding=pad, bias=False)
        self.value_conv = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels, bias=False)
        self.lambda_t = nn.Parameter(torch.empty(channels))
        if lambda_init is None:
            nn.init.normal_(self.lambda_t)
        else:
            nn.init.constant_(self.lambda_t, float(lambda_init))

    def gate(self, x: Tensor, descriptor: Optional[Tensor] = None) -> Tensor:
        """Per-sample, per-head gate ``[B, G]`` of the input map ``x``.

        ``descriptor`` is ``x``'s channel means ``[B, C]`` when the caller
        has them already (see :func:`mrla_mm.ops.residual_relu_pool`).
        """
        y = channel_descriptor(x) if descriptor is None else descriptor
        return light_gate(
            *query_key(y, self.query_conv.weight, self.key_conv.weight),
            self.num_heads)

    def forward(self,
                x: Tensor,
                o_prev: Tensor,
                scale: Optional[Tensor] = None,
                shift: Optional[Tensor] = None,
                add_input: bool = False,
                descriptor: Optional[Tensor] = None,
                norm: Optional[nn.Module] = None) -> Tensor:
        """Compute ``O^t`` from ``x`` = ``X^t`` and ``o_prev`` ~ ``O^{t-1}``.

        Both are ``[B, C, H, W]``; the result has the same shape.
        ``scale``/``shift`` (``[C]``, a folded eval-mode norm) and
        ``add_input`` (add ``x``) extend the result in the same pass, see
        :func:`mrla_light_core`. ``descriptor`` is ``x``'s channel means
        ``[B, C]`` when already computed. ``norm``, a BatchNorm module (in
        training or eval mode), makes the result ``x + norm(O^t)``, with
        ``O^t`` recomputed in the backward instead of stored (see
        :func:`mrla_light_batch_norm`); it excludes ``scale``, ``shift``
        and ``add_input``.
        """
        check_feature_map(x, self.channels, 'x')
        check_feature_map(o_prev, self.channels, 'o_prev')
        if o_prev.shape != x.shape:
            raise ValueError(f'o_prev must have the shape of x '
                             f'{tuple(x.shape)}, got {tuple(o_prev.shape)}')
        check_norm_excludes_fold(norm, scale, add_input)
        if norm is not None:
            return mrla_light_batch_norm(
                x, self.value_conv.weight, self.gate(x, descriptor),
                self.lambda_t, o_prev, self.value_act,
                **advance_batch_norm(norm))
        return mrla_light_core(
            x,
            self.value_conv.weight,
            self.gate(x, descriptor),
            self.lambda_t,
            o_prev,
            self.value_act,
            scale=scale,
            shift=shift,
            add_input=add_input)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_heads={self.num_heads}, '
                f'dim_per_head={self.dim_per_head}, '
                f'kernel_size={self.kernel_size}, value_act={self.value_act}')

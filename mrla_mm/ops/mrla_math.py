"""The score and gate math of MRLA, in one place.

Every implementation in this package (the modules, the pure-PyTorch path of
the ops, the compiled kernels' Python reference and the tests) takes the
per-head scores, gates and softmax weights from here. Tensors follow one
convention:

- ``q`` and ``k`` are channel descriptors of shape ``[B, C]``,
- ``keys`` is a layer history of shape ``[B, T, C]``,
- per-head quantities have a trailing head axis ``G`` with ``C = G * d``.

The functions depend on torch only, so that :mod:`mrla_mm.ops` can be built,
checked and timed on a machine without the OpenMMLab stack.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .ext_loader import exporting


def adaptive_kernel_size(channels: int) -> int:
    """ECA-style kernel size of the channel convolutions producing Q and K.

    ``t = int(|(log2(C) + 1) / 2|)``, rounded up to the next odd number, as
    in the paper: 5 for C in 192..1024, 7 for C = 2048.
    """
    t = int(abs((math.log2(channels) + 1) / 2))
    return t if t % 2 else t + 1


class _ChannelMean(torch.autograd.Function):
    """Mean over H and W whose gradient stays a broadcast view.

    The gradient of a channel mean is one constant per (b, c). PyTorch's
    pooling backward writes it out as a full map before it is added to the
    map's other gradients; as a view it is added in that one pass.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.shape = x.shape
        return x.mean((2, 3))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        b, c, h, w = ctx.shape
        return (grad / (h * w))[:, :, None, None].expand(b, c, h, w)


def channel_descriptor(x: Tensor) -> Tensor:
    """Global average pool of a ``[B, C, H, W]`` map to ``[B, C]``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _ChannelMean.apply(x)
    return F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0]


def _channel_windows(y: Tensor, kernel_size: int) -> Tensor:
    """The zero-padded windows ``[B, C, k]`` that a kernel of size ``k``
    slides over along the channels of ``y`` [B, C], as a view."""
    pad = (kernel_size - 1) // 2
    padded = F.pad(y, (pad, pad))
    if exporting():
        # The TorchScript exporter converts unfold only where every size
        # is static; the shifted slices export with a free batch size.
        c = y.shape[1]
        return torch.stack(
            [padded[:, i:i + c] for i in range(kernel_size)], dim=2)
    return padded.unfold(1, kernel_size, 1)


def channel_conv1d(y: Tensor, weight: Tensor) -> Tensor:
    """Slide one ``[1, 1, k]`` kernel along the channels of ``y`` [B, C].

    Plain cross-correlation with zero padding ``(k - 1) // 2``, no bias:
    how MRLA turns the descriptor into a query or a key. A product with
    the unfolded windows, because ``F.conv1d`` on a one-channel signal
    costs several times more on the CPU (oneDNN), mostly in its backward.
    """
    return _channel_windows(y, weight.shape[-1]) @ weight.reshape(-1)


def query_key(y: Tensor, query_weight: Tensor,
              key_weight: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`channel_conv1d` of ``y`` with the query and the key kernel,
    both ``[1, 1, k]``, from one product: ``(q, k)``, each [B, C]."""
    kernels = torch.cat((query_weight, key_weight)).view(2, -1)
    # dim 2, not -1: the TorchScript exporter resolves a negative dim here
    # against a wrong rank when the batch size is left free.
    return (_channel_windows(y, kernels.shape[1]) @ kernels.t()).unbind(2)


def head_scores(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """Scaled per-head dot products ``q_g . k_g / sqrt(d)``.

    Args:
        q (Tensor): queries ``[B, C]``.
        k (Tensor): keys ``[B, C]`` or a history ``[B, T, C]``.
        num_heads (int): number of contiguous channel blocks ``G``.

    Returns:
        Tensor: ``[B, G]`` for ``[B, C]`` keys, ``[B, G, T]`` for a history.
    """
    b, c = q.shape
    d = c // num_heads
    qh = q.reshape(b, num_heads, d)
    if k.dim() == 2:
        # Two small ops; an einsum would route through bmm and reshapes.
        return (qh * k.reshape(b, num_heads, d)).sum(-1) * d**-0.5
    kh = k.reshape(b, k.shape[1], num_heads, d)
    return torch.einsum('bgd,btgd->bgt', qh, kh) * d**-0.5


def light_gate(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """MRLA-light gate ``sigmoid(q_g . k_g / sqrt(d))``, shape ``[B, G]``."""
    return torch.sigmoid(head_scores(q, k, num_heads))


def base_weights(q: Tensor, keys: Tensor, num_heads: int) -> Tensor:
    """MRLA-base attention over the layer history, ``[B, G, T]``.

    Softmax over ``T`` of ``q_g . k^s_g / sqrt(d)``.
    """
    return torch.softmax(head_scores(q, keys, num_heads), dim=-1)


def heads_to_channels(w: Tensor, channels: int) -> Tensor:
    """Repeat a per-head quantity ``[..., G]`` over its ``d`` channels."""
    return w.repeat_interleave(channels // w.shape[-1], dim=-1)


# The map combinations below compute in the dtype of their maps: their
# small factors (gates, lambda, folded norms, softmax weights) are float32
# parameters or autocast outputs and would otherwise promote a bfloat16 or
# float16 map, and everything after it, to float32 under autocast, as the
# compiled ops never do. For float32 and float64 maps the casts are no-ops.


def light_combine(v: Tensor, gate: Tensor, lambda_t: Tensor,
                  o_prev: Tensor) -> Tensor:
    """``gate[b, g] * v + lambda[c] * o_prev`` on ``[B, C, H, W]`` maps,
    in the dtype of ``v``."""
    c = v.shape[1]
    g = heads_to_channels(gate.to(v.dtype), c)[:, :, None, None]
    return torch.addcmul(v * g,
                         lambda_t.to(v.dtype).view(1, c, 1, 1),
                         o_prev.to(v.dtype))


def channel_affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale[c] + shift[c]`` on a ``[B, C, H, W]`` map, in its dtype:
    an eval-mode BatchNorm folded into two vectors."""
    c = x.shape[1]
    return torch.addcmul(
        shift.to(x.dtype).view(1, c, 1, 1), x,
        scale.to(x.dtype).view(1, c, 1, 1))


def base_combine(weights: Tensor, values: Sequence[Tensor]) -> Tensor:
    """``sum_s weights[b, g, s] * values[s]`` over a list of ``[B, C, H, W]``,
    in the dtype of the values.

    Reads each cached value in place; no concatenation of the history.
    """
    c = values[0].shape[1]
    w = heads_to_channels(
        weights.to(values[0].dtype).transpose(1, 2), c)[..., None, None]
    out = values[0] * w[:, 0]
    for s in range(1, len(values)):
        out = torch.addcmul(out, values[s], w[:, s])
    return out


def mrla_value(x: Tensor, value_weight: Tensor,
               value_act: str = 'identity') -> Tensor:
    """The value map ``act(depthwise3x3(x))`` (no bias, zero padding 1).

    ``value_act`` is ``'identity'`` or ``'gelu'`` (exact erf form).
    """
    v = F.conv2d(x, value_weight, padding=1, groups=x.shape[1])
    return F.gelu(v) if value_act == 'gelu' else v

"""MRLA-base core: softmax readout over a per-stage key/value cache."""
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd import Function

from .ext_loader import acc_dtype, load_ext, map_format, use_compiled
from .mrla_math import base_combine, base_weights


class MRLABaseReadoutFunction(Function):
    """Compiled ``sum_s weights[b, g, s] * values[s]``, values read in place.

    Inputs are the softmax weights ``[B, G, T]`` followed by the ``T``
    value maps. First-order gradients come from the kernel; a double
    backward goes through the PyTorch composition.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, *values: Tensor) -> Tensor:
        fmt = map_format(values[0])
        dtype = values[0].dtype
        vals = [v.to(dtype).contiguous(memory_format=fmt) for v in values]
        w = weights.detach().to(acc_dtype(vals[0])).contiguous()
        out = load_ext().mrla_base_forward(w, vals)
        ctx.save_for_backward(weights, *vals)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, *values = ctx.saved_tensors
        if torch.is_grad_enabled():
            inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            with torch.enable_grad():
                out = base_combine(inputs[0], inputs[1:])
                return torch.autograd.grad(
                    out, inputs, grad_out, create_graph=True)
        b, c = values[0].shape[:2]
        heads = weights.shape[1]
        grad_out = grad_out.to(values[0].dtype).contiguous(
            memory_format=map_format(values[0]))
        *grad_values, part = load_ext().mrla_base_backward(
            grad_out, weights.to(acc_dtype(values[0])).contiguous(), values)
        grad_weights = part.view(b, heads, c // heads, -1).sum(2)
        return (grad_weights.to(weights.dtype), *grad_values)


def mrla_base_readout(q: Tensor, keys: Tensor, values: Sequence[Tensor],
                      num_heads: int) -> Tensor:
    """``O_g = sum_s softmax_s(q_g . k^s_g / sqrt(d)) * V^s_g``.

    The softmax weights come from :func:`mrla_math.base_weights`; the
    readout runs compiled when the extension is built and takes the inputs
    (see :mod:`mrla_mm.ops.ext_loader`), else as a PyTorch composition.

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
    weights = base_weights(q, keys, num_heads)
    if use_compiled('mrla_base_readout', values):
        return MRLABaseReadoutFunction.apply(weights, *values)
    return base_combine(weights, values)

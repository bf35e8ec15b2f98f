"""MRLA-base core: softmax readout over a per-stage key/value cache."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd import Function

from .checks import check_folded_norm
from .double_backward import composition_grads
from .ext_loader import (
    acc_dtype,
    load_ext,
    map_format,
    needs_autograd,
    small_operand,
    use_compiled,
)
from .mrla_math import base_combine, base_weights, channel_affine


class MRLABaseReadoutFunction(Function):
    """Compiled ``sum_s weights[b, g, s] * values[s]``, values read in place.

    Inputs are the softmax weights ``[B, G, T]`` followed by the ``T``
    value maps. First-order gradients come from the kernel; a double
    backward goes through the PyTorch composition.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, *values: Tensor) -> Tensor:
        ctx.save_for_backward(weights, *values)
        none = weights.new_empty(0)
        return load_ext().mrla_base_forward(
            *_kernel_operands(weights, values), none, none, none)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, *values = ctx.saved_tensors
        if torch.is_grad_enabled():
            return tuple(
                composition_grads((weights, *values), grad_out,
                                  lambda: base_combine(weights, values)))
        grad_weights, grad_values = readout_backward(
            grad_out, weights, values, ctx.needs_input_grad[1:])
        return (grad_weights, *grad_values)


def readout_backward(
    grad_out: Tensor,
    weights: Tensor,
    values: Sequence[Tensor],
    want_values: Optional[Sequence[bool]] = None
) -> Tuple[Tensor, List[Optional[Tensor]]]:
    """The kernel's gradients of the readout: for the weights ``[B, G, T]``
    and for each value map, None for a value whose entry of
    ``want_values`` is false (all are wanted by default); the kernel then
    reads that value for the weights' gradient and writes nothing for it.
    """
    w, vals = _kernel_operands(weights, values)
    grad_out = grad_out.to(vals[0].dtype).contiguous(
        memory_format=map_format(vals[0]))
    want = [True] * len(vals) if want_values is None else list(want_values)
    *grad_values, part = load_ext().mrla_base_backward(grad_out, w, vals,
                                                       want)
    b, c = vals[0].shape[:2]
    grad_weights = part.view(b, weights.shape[1], c // weights.shape[1],
                             -1).sum(2)
    return grad_weights.to(weights.dtype), grad_values


def _kernel_operands(weights, values):
    """Weights in the accumulation dtype; values in the dtype and memory
    format of the first (no copy when they already agree)."""
    fmt = map_format(values[0])
    vals = [
        v.detach().to(values[0].dtype).contiguous(memory_format=fmt)
        for v in values
    ]
    return weights.detach().to(acc_dtype(vals[0])).contiguous(), vals


def mrla_base_readout(q: Tensor,
                      keys: Tensor,
                      values: Sequence[Tensor],
                      num_heads: int,
                      *,
                      scale: Optional[Tensor] = None,
                      shift: Optional[Tensor] = None,
                      residual: Optional[Tensor] = None) -> Tensor:
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
        scale (Tensor, optional): per-channel factor ``[C]``, with
            ``shift``: an eval-mode BatchNorm folded in, which a ReLU
            follows (the MRLA branch of a ResNet block).
        shift (Tensor, optional): per-channel offset ``[C]``.
        residual (Tensor, optional): a map added last, ``[B, C, H, W]``.

    Returns:
        Tensor: ``O`` ``[B, C, H, W]``; ``relu(O * scale + shift)`` with a
        folded norm, plus ``residual`` when given.
    """
    if keys.shape[1] != len(values):
        raise ValueError(f'keys hold {keys.shape[1]} layers but values hold '
                         f'{len(values)}')
    check_folded_norm(scale, shift)
    weights = base_weights(q, keys, num_heads)
    compiled = use_compiled('mrla_base_readout', values)
    if compiled and not needs_autograd(weights, *values, scale, shift,
                                       residual):
        return _fused_inference(weights, values, scale, shift, residual)
    out = (MRLABaseReadoutFunction.apply(weights, *values)
           if compiled else base_combine(weights, values))
    if scale is not None:
        out = torch.relu(channel_affine(out, scale, shift))
    return out if residual is None else out + residual


def _fused_inference(weights, values, scale, shift, residual):
    """Readout, folded norm, ReLU and residual in one pass, no autograd."""
    w, vals = _kernel_operands(weights, values)
    res = w.new_empty(0, dtype=vals[0].dtype) if residual is None else (
        residual.detach().to(vals[0].dtype).contiguous(
            memory_format=map_format(vals[0])))
    return load_ext().mrla_base_forward(w, vals,
                                        small_operand(scale, vals[0]),
                                        small_operand(shift, vals[0]), res)

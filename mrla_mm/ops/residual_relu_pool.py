"""``relu(residual + identity)`` of a ResNet block, with its channel means.

The means are MRLA's channel descriptor (:func:`mrla_math.channel_descriptor`)
of the block output. Computing them while the output is written saves the
separate pooling pass and ReLU's own pass; in training the backward takes
the gradients of the output and of the means in one pass, where autograd
would first add the means' (a broadcast) into the output's and then run
ReLU's backward.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd import Function

from .checks import check_folded_norm
from .ext_loader import (
    load_ext,
    map_format,
    needs_autograd,
    small_operand,
    use_compiled,
)
from .mrla_math import channel_affine, channel_descriptor


def _compiled_forward(residual: Tensor,
                      identity: Tensor,
                      inplace: bool,
                      scale: Optional[Tensor] = None,
                      shift: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    fmt = map_format(residual)
    return load_ext().residual_relu_pool(
        residual.contiguous(memory_format=fmt),
        identity.to(residual.dtype).contiguous(memory_format=fmt),
        small_operand(scale, residual), small_operand(shift, residual),
        inplace)


class ResidualReluPoolFunction(Function):
    """Compiled :func:`residual_relu_pool` with its backward. ``out`` is
    saved for the backward (ReLU's mask); with ``inplace`` it is
    ``residual``, marked as modified."""

    @staticmethod
    def forward(ctx, residual: Tensor, identity: Tensor,
                inplace: bool) -> Tuple[Tensor, Tensor]:
        # Only a map already in the kernels' layout can be written over.
        inplace = inplace and residual.is_contiguous(
            memory_format=map_format(residual))
        out, mean = _compiled_forward(residual, identity, inplace)
        if inplace:
            ctx.mark_dirty(residual)
            out = residual
        ctx.save_for_backward(out)
        ctx.identity_dtype = identity.dtype
        return out, mean

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mean: Tensor):
        out, = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Double backward: ReLU's mask is constant almost everywhere.
            share = grad_mean / (out.shape[2] * out.shape[3])
            grad = torch.where(out <= 0, 0, grad_out + share[:, :, None, None])
        else:
            grad = load_ext().residual_relu_pool_backward(
                grad_out.to(out.dtype).contiguous(
                    memory_format=map_format(out)),
                grad_mean.to(out.dtype).contiguous(), out)
        return grad, grad.to(ctx.identity_dtype), None


def residual_relu_pool(
        residual: Tensor,
        identity: Tensor,
        inplace: bool = False,
        scale: Optional[Tensor] = None,
        shift: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``out = relu(residual + identity)`` and ``out``'s channel means.

    Runs compiled when the extension is built and takes the inputs (see
    :mod:`mrla_mm.ops.ext_loader`), else as PyTorch ops. Differentiable
    in both.

    Args:
        residual (Tensor): residual branch of a block, ``[B, C, H, W]``.
        identity (Tensor): its shortcut, same shape.
        inplace (bool): write ``out`` over ``residual``, as mmdet's blocks
            add the shortcut in place. Defaults to False.
        scale (Tensor, optional): per-channel factor ``[C]`` applied to
            ``residual`` first, with ``shift``: the residual branch's
            eval-mode BatchNorm folded in, so that its output map is never
            written. Without autograd the compiled op applies it in its
            one pass; else it runs as its own op.
        shift (Tensor, optional): per-channel offset ``[C]``.

    Returns:
        tuple[Tensor, Tensor]: ``out`` ``[B, C, H, W]`` in the memory
        format of ``residual``, and the means ``[B, C]``.
    """
    check_folded_norm(scale, shift)
    compiled = use_compiled('residual_relu_pool', (residual, identity))
    if scale is not None and not (compiled and not needs_autograd(
            residual, identity, scale, shift)):
        residual = channel_affine(residual, scale, shift)
        scale = shift = None
    if not compiled:
        out = (residual.add_(identity) if inplace else residual +
               identity).relu_()
        return out, channel_descriptor(out)
    if needs_autograd(residual, identity):
        return ResidualReluPoolFunction.apply(residual, identity, inplace)
    return _compiled_forward(residual, identity, inplace, scale, shift)

"""``relu(residual + identity)`` of a ResNet block, with its channel means.

The means are MRLA's channel descriptor (:func:`mrla_math.channel_descriptor`)
of the block output. Computing them while the output is written saves the
separate pooling pass; the op is for inference (no autograd) and the block
calls it only when no gradient is needed.
"""
from typing import Tuple

from torch import Tensor

from .ext_loader import load_ext, map_format, needs_autograd, use_compiled
from .mrla_math import channel_descriptor


def residual_relu_pool(residual: Tensor,
                       identity: Tensor,
                       inplace: bool = False) -> Tuple[Tensor, Tensor]:
    """``out = relu(residual + identity)`` and ``out``'s channel means.

    Runs compiled when the extension is built and takes the inputs (see
    :mod:`mrla_mm.ops.ext_loader`), else as two PyTorch ops.

    Args:
        residual (Tensor): residual branch of a block, ``[B, C, H, W]``.
        identity (Tensor): its shortcut, same shape.
        inplace (bool): write ``out`` over ``residual``, as mmdet's blocks
            add the shortcut in place. Defaults to False.

    Returns:
        tuple[Tensor, Tensor]: ``out`` ``[B, C, H, W]`` in the memory
        format of ``residual``, and the means ``[B, C]``.

    Raises:
        RuntimeError: when called with autograd recording a graph of the
            inputs; the compiled op has no backward.
    """
    if needs_autograd(residual, identity):
        raise RuntimeError('residual_relu_pool is an inference op; call it '
                           'under torch.no_grad()')
    if not use_compiled('residual_relu_pool', (residual, identity)):
        out = (residual.add_(identity) if inplace else residual +
               identity).relu_()
        return out, channel_descriptor(out)
    fmt = map_format(residual)
    out, mean = load_ext().residual_relu_pool(
        residual.contiguous(memory_format=fmt),
        identity.to(residual.dtype).contiguous(memory_format=fmt), inplace)
    return out, mean

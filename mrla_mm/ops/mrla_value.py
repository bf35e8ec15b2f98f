"""The value map ``act(dwconv3x3(x))`` of MRLA, compiled.

The light-core kernels compute it when given a unit gate and no history;
PyTorch's own depthwise convolution is slow on the CPU in NCHW, which is
where MRLA-base spends most of its extra time without this op.
"""
import torch
from torch import Tensor
from torch.autograd import Function

from .checks import check_value_act
from .double_backward import composition_grads
from .ext_loader import acc_dtype, load_ext, map_format, use_compiled
from .mrla_light import ACT_CODES
from .mrla_math import mrla_value


def _operands(x: Tensor, value_weight: Tensor):
    fmt = map_format(x)
    acc = acc_dtype(x)
    x = x.contiguous(memory_format=fmt)
    unit_gate = x.new_ones(x.shape[0], 1, dtype=acc)
    none = x.new_empty(0, dtype=acc)
    return (x, value_weight.detach().to(acc).reshape(x.shape[1],
                                                     9).contiguous(),
            unit_gate, none, x.new_empty(0))


class MRLAValueFunction(Function):
    """Compiled value map with a one-pass backward; a double backward goes
    through :func:`mrla_math.mrla_value`."""

    @staticmethod
    def forward(ctx, x: Tensor, value_weight: Tensor,
                value_act: str) -> Tensor:
        ctx.save_for_backward(x, value_weight)
        ctx.value_act = value_act
        none = x.new_empty(0, dtype=acc_dtype(x))
        return load_ext().mrla_light_forward(*_operands(x, value_weight),
                                             none, none,
                                             ACT_CODES[value_act], False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, value_weight = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*composition_grads(
                (x, value_weight), grad_out,
                lambda: mrla_value(x, value_weight, ctx.value_act)), None)
        ops = _operands(x, value_weight)
        grad_out = grad_out.to(x.dtype).contiguous(
            memory_format=map_format(x))
        gx, _, gw, _, _ = load_ext().mrla_light_backward(
            grad_out, *ops, ops[1].new_empty(0), ACT_CODES[ctx.value_act])
        return (gx, gw.sum(0).view_as(value_weight).to(value_weight.dtype),
                None)


def mrla_value_map(x: Tensor, value_weight: Tensor,
                   value_act: str = 'identity') -> Tensor:
    """``act(depthwise3x3(x))``, as :func:`mrla_math.mrla_value`.

    Runs compiled when the extension is built and takes the input, else
    calls :func:`mrla_math.mrla_value`.

    Args:
        x (Tensor): ``[B, C, H, W]``.
        value_weight (Tensor): depthwise kernel ``[C, 1, 3, 3]``.
        value_act (str): ``'identity'`` or ``'gelu'``.

    Returns:
        Tensor: ``[B, C, H, W]`` in the memory format of ``x``.
    """
    check_value_act(value_act)
    if not use_compiled('mrla_value_map', (x, )):
        return mrla_value(x, value_weight, value_act)
    return MRLAValueFunction.apply(x, value_weight, value_act)

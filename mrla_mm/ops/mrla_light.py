"""MRLA-light core: ``gate * act(dwconv3x3(x)) + lambda * o_prev``."""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd import Function

from .checks import check_folded_norm, check_value_act
from .double_backward import composition_grads
from .ext_loader import (
    acc_dtype,
    load_ext,
    map_format,
    needs_autograd,
    small_operand,
    use_compiled,
)
from .mrla_math import channel_affine, light_combine, mrla_value

ACT_CODES = dict(identity=0, gelu=1)


def mrla_light_core_pytorch(x: Tensor,
                            value_weight: Tensor,
                            gate: Tensor,
                            lambda_t: Tensor,
                            o_prev: Tensor,
                            value_act: str = 'identity',
                            scale: Optional[Tensor] = None,
                            shift: Optional[Tensor] = None,
                            add_input: bool = False) -> Tensor:
    """The pure-PyTorch composition of :func:`mrla_light_core`."""
    out = light_combine(mrla_value(x, value_weight, value_act), gate,
                        lambda_t, o_prev)
    return _extend(out, x, scale, shift, add_input)


def _extend(out, x, scale, shift, add_input):
    """The folded norm and the residual after the core, when asked."""
    if scale is not None:
        out = channel_affine(out, scale, shift)
    return out + x if add_input else out


class MRLALightCoreFunction(Function):
    """Compiled MRLA-light core with a one-pass backward.

    First-order gradients come from the kernel. When a graph of the
    gradient is asked for (double backward), the backward re-runs the
    PyTorch composition under autograd, which computes the same function.
    """

    @staticmethod
    def forward(ctx, x: Tensor, value_weight: Tensor, gate: Tensor,
                lambda_t: Tensor, o_prev: Tensor, value_act: str) -> Tensor:
        ctx.save_for_backward(x, value_weight, gate, lambda_t, o_prev)
        ctx.value_act = value_act
        return load_ext().mrla_light_forward(
            *_kernel_operands(x, value_weight, gate, lambda_t, o_prev),
            *[x.new_empty(0, dtype=acc_dtype(x))] * 2, ACT_CODES[value_act],
            False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if torch.is_grad_enabled():
            saved = ctx.saved_tensors
            return (*composition_grads(
                saved, grad_out,
                lambda: mrla_light_core_pytorch(*saved, ctx.value_act)), None)
        x, value_weight, gate, lambda_t, o_prev = ctx.saved_tensors
        ops = _kernel_operands(x, value_weight, gate, lambda_t, o_prev)
        grad_out = grad_out.to(x.dtype).contiguous(
            memory_format=map_format(x))
        gx, go, gw, gg, gl = load_ext().mrla_light_backward(
            grad_out, *ops, ops[1].new_empty(0), ACT_CODES[ctx.value_act])
        b, c = x.shape[:2]
        heads = gate.shape[1]
        return (gx, gw.sum(0).view_as(value_weight).to(value_weight.dtype),
                gg.view(b, heads, c // heads).sum(-1).to(gate.dtype),
                gl.sum(0).to(lambda_t.dtype), go, None)


def _kernel_operands(x, value_weight, gate, lambda_t, o_prev):
    """The operands as the kernels take them: maps in one supported
    memory format and dtype, small tensors in the accumulation dtype."""
    fmt = map_format(x)
    acc = acc_dtype(x)
    x = x.contiguous(memory_format=fmt)

    def small(t):
        return t.detach().to(acc).contiguous()

    return (x, small(value_weight).view(x.shape[1], 9), small(gate),
            small(lambda_t).view(-1),
            o_prev.detach().to(x.dtype).contiguous(memory_format=fmt))


def mrla_light_core(x: Tensor,
                    value_weight: Tensor,
                    gate: Tensor,
                    lambda_t: Tensor,
                    o_prev: Tensor,
                    value_act: str = 'identity',
                    *,
                    scale: Optional[Tensor] = None,
                    shift: Optional[Tensor] = None,
                    add_input: bool = False) -> Tensor:
    """Output of an MRLA-light layer given its per-head gate.

    Runs the compiled op when the extension is built and takes the inputs
    (see :mod:`mrla_mm.ops.ext_loader`), else the PyTorch composition.

    Args:
        x (Tensor): layer output ``X^t``, ``[B, C, H, W]``.
        value_weight (Tensor): depthwise kernel ``[C, 1, 3, 3]``.
        gate (Tensor): ``sigmoid(q . k / sqrt(d))`` per head, ``[B, G]``.
        lambda_t (Tensor): per-channel weight of the history, ``[C]``.
        o_prev (Tensor): approximation of ``O^{t-1}``, ``[B, C, H, W]``.
        value_act (str): ``'identity'`` (ResNet) or ``'gelu'`` (ViT).
        scale (Tensor, optional): per-channel factor ``[C]`` applied to
            the result, with ``shift``: an eval-mode BatchNorm folded in.
        shift (Tensor, optional): per-channel offset ``[C]``.
        add_input (bool): add ``x`` to the result (the residual of a
            ResNet block). Defaults to False.

    Returns:
        Tensor: ``O^t`` (times ``scale`` plus ``shift``, plus ``x`` if
        asked), ``[B, C, H, W]``, in the memory format of ``x``.
    """
    check_value_act(value_act)
    check_folded_norm(scale, shift)
    if not use_compiled('mrla_light_core', (x, o_prev)):
        return mrla_light_core_pytorch(x, value_weight, gate, lambda_t,
                                       o_prev, value_act, scale, shift,
                                       add_input)
    if not needs_autograd(x, value_weight, gate, lambda_t, o_prev, scale,
                          shift):
        return _fused_inference(x, value_weight, gate, lambda_t, o_prev,
                                value_act, scale, shift, add_input)
    out = MRLALightCoreFunction.apply(x, value_weight, gate, lambda_t,
                                      o_prev, value_act)
    return _extend(out, x, scale, shift, add_input)


def _fused_inference(x, value_weight, gate, lambda_t, o_prev, value_act,
                     scale, shift, add_input):
    """The whole expression in one pass, without autograd."""
    return load_ext().mrla_light_forward(
        *_kernel_operands(x, value_weight, gate, lambda_t, o_prev),
        small_operand(scale, x), small_operand(shift, x),
        ACT_CODES[value_act], add_input)

"""MRLA-light branch of a ResNet block: ``x + batch_norm(core(x, o_prev))``.

In training the branch costs, besides the core, a statistics pass of the
norm, its normalisation, the residual add and their backward passes, and
it keeps the core's output for the norm's backward. Here one op writes
``x + batch_norm(z)`` from one read of the maps (on the CPU the core
output ``z`` of a block of channels stays in cache between the statistics
and the output), and the backward recomputes ``z`` from ``x`` (a 3x3
depthwise convolution is cheaper than a stored map) and turns the incoming
gradient into the core's through the norm's coefficients on the fly:
``z`` is never stored.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from .batch_norm_stats import update_running_stats
from .checks import check_batch_norm_input, check_value_act
from .double_backward import composition_grads
from .ext_loader import acc_dtype, load_ext, map_format, use_compiled
from .mrla_light import (
    ACT_CODES,
    _kernel_operands,
    mrla_light_core_pytorch,
)


def mrla_light_batch_norm_pytorch(x: Tensor,
                                  value_weight: Tensor,
                                  gate: Tensor,
                                  lambda_t: Tensor,
                                  o_prev: Tensor,
                                  value_act: str,
                                  running_mean: Optional[Tensor],
                                  running_var: Optional[Tensor],
                                  weight: Optional[Tensor],
                                  bias: Optional[Tensor],
                                  training: bool,
                                  momentum: float,
                                  eps: float) -> Tensor:
    """The pure-PyTorch composition of :func:`mrla_light_batch_norm`."""
    z = mrla_light_core_pytorch(x, value_weight, gate, lambda_t, o_prev,
                                value_act)
    return x + F.batch_norm(z, running_mean, running_var, weight, bias,
                            training, momentum, eps)


class MRLALightNormFunction(Function):
    """Compiled ``x + batch_norm(z)``, ``z`` the MRLA-light core of ``x``.

    The op normalises with the batch's statistics (``batch_stats``, their
    dependence on ``z`` is in the backward; ``running_mean`` and
    ``running_var``, when given, are updated in place with ``momentum``) or
    with the running statistics (constants). First-order gradients come
    from the kernels; a double backward goes through the PyTorch
    composition.
    """

    @staticmethod
    def forward(ctx, x: Tensor, value_weight: Tensor, gate: Tensor,
                lambda_t: Tensor, o_prev: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], batch_stats: bool,
                momentum: float, eps: float, value_act: str) -> Tensor:
        ops = _kernel_operands(x, value_weight, gate, lambda_t, o_prev)
        gamma, beta = _norm_operand(weight, x, 1.), _norm_operand(bias, x, 0.)
        given = (ops[0].new_empty(0), ) * 2 if batch_stats else (
            running_mean.detach(), running_var.detach())
        y, mean, invstd, var = load_ext().mrla_light_norm_forward(
            *ops, gamma, beta, *given, batch_stats, eps,
            ACT_CODES[value_act])
        if batch_stats:
            update_running_stats(x, running_mean, running_var, momentum,
                                 mean, var)
        ctx.save_for_backward(x, value_weight, gate, lambda_t, o_prev, weight,
                              bias, mean, invstd, var)
        ctx.batch_stats, ctx.eps, ctx.value_act = batch_stats, eps, value_act
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x, value_weight, gate, lambda_t, o_prev, weight, bias, mean, invstd,
         _) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_out)
        ops = _kernel_operands(x, value_weight, gate, lambda_t, o_prev)
        grad_out = grad_out.to(x.dtype).contiguous(
            memory_format=map_format(x))
        gamma = _norm_operand(weight, x, 1.)
        gx, go, gw, gg, gl, sums = load_ext().mrla_light_norm_backward(
            grad_out, *ops, gamma, mean, invstd, ctx.batch_stats,
            ACT_CODES[ctx.value_act])
        sum_g, sum_gz = sums[:, 0], sums[:, 1]
        bsz, ch = x.shape[:2]
        heads = gate.shape[1]
        grad_weight = None if weight is None else (invstd * sum_gz).to(
            weight.dtype)
        grad_bias = None if bias is None else sum_g.to(bias.dtype)
        return (gx, gw.sum(0).view_as(value_weight).to(value_weight.dtype),
                gg.view(bsz, heads, ch // heads).sum(-1).to(gate.dtype),
                gl.sum(0).to(lambda_t.dtype), go, grad_weight, grad_bias,
                None, None, None, None, None, None)


def _norm_operand(param: Optional[Tensor], x: Tensor,
                  absent: float) -> Tensor:
    """The norm's weight or bias ``[C]`` as the kernels take it: in the
    accumulation dtype of ``x``, filled with ``absent`` when there is
    none."""
    if param is None:
        return x.new_full((x.shape[1], ), absent, dtype=acc_dtype(x))
    return param.detach().to(acc_dtype(x)).contiguous()


def _differentiable_backward(ctx, grad_out):
    """Gradients through the PyTorch composition, with their graph (double
    backward). With batch statistics the norm is re-run on the batch, else
    on the statistics the forward used."""
    (x, value_weight, gate, lambda_t, o_prev, weight, bias, mean, _,
     var) = ctx.saved_tensors
    stats = (None, None) if ctx.batch_stats else (mean, var.to(mean))

    def composition():
        z = mrla_light_core_pytorch(x, value_weight, gate, lambda_t, o_prev,
                                    ctx.value_act)
        return x + F.batch_norm(z, *stats, weight, bias, ctx.batch_stats,
                                0., ctx.eps)

    return (*composition_grads(
        (x, value_weight, gate, lambda_t, o_prev, weight, bias), grad_out,
        composition), None, None, None, None, None, None)


def mrla_light_batch_norm(x: Tensor,
                          value_weight: Tensor,
                          gate: Tensor,
                          lambda_t: Tensor,
                          o_prev: Tensor,
                          value_act: str = 'identity',
                          *,
                          running_mean: Optional[Tensor],
                          running_var: Optional[Tensor],
                          weight: Optional[Tensor] = None,
                          bias: Optional[Tensor] = None,
                          training: bool = False,
                          momentum: float = 0.1,
                          eps: float = 1e-5) -> Tensor:
    """``x + batch_norm(z)``, ``z`` the output of an MRLA-light layer.

    The norm arguments are those of :func:`torch.nn.functional.batch_norm`
    and mean the same: with ``training`` the batch statistics normalise
    ``z`` and update ``running_mean``/``running_var`` (when given) in
    place with ``momentum``; else the running statistics are used.

    Runs the compiled kernels when the extension is built and takes the
    inputs (see :mod:`mrla_mm.ops.ext_loader`), else the PyTorch
    composition.

    Args:
        x (Tensor): layer output ``X^t``, ``[B, C, H, W]``.
        value_weight (Tensor): depthwise kernel ``[C, 1, 3, 3]``.
        gate (Tensor): ``sigmoid(q . k / sqrt(d))`` per head, ``[B, G]``.
        lambda_t (Tensor): per-channel weight of the history, ``[C]``.
        o_prev (Tensor): approximation of ``O^{t-1}``, ``[B, C, H, W]``.
        value_act (str): ``'identity'`` (ResNet) or ``'gelu'`` (ViT).
        running_mean (Tensor, optional): ``[C]``.
        running_var (Tensor, optional): ``[C]``.
        weight (Tensor, optional): the norm's ``gamma`` ``[C]``.
        bias (Tensor, optional): the norm's ``beta`` ``[C]``.
        training (bool): normalise with the batch statistics.
        momentum (float): running-statistics update factor.
        eps (float): added to the variance.

    Returns:
        Tensor: ``[B, C, H, W]`` in the memory format of ``x``.
    """
    check_value_act(value_act)
    check_batch_norm_input(x, running_mean, running_var, training)
    if not use_compiled('mrla_light_batch_norm', (x, o_prev)):
        return mrla_light_batch_norm_pytorch(x, value_weight, gate, lambda_t,
                                             o_prev, value_act, running_mean,
                                             running_var, weight, bias,
                                             training, momentum, eps)
    return MRLALightNormFunction.apply(x, value_weight, gate, lambda_t,
                                       o_prev, weight, bias, running_mean,
                                       running_var, training, momentum, eps,
                                       value_act)

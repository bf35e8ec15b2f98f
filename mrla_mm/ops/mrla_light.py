"""MRLA-light ops: the Python side of the kernels in
csrc/pytorch/mrla_light.cpp.

- :func:`mrla_light_core`: ``gate * act(dwconv3x3(x)) + lambda * o_prev``,
  optionally with a folded eval-mode norm and the residual add;
- :func:`mrla_light_batch_norm`: the MRLA-light branch of a ResNet block,
  ``x + batch_norm(core(x, o_prev))``, kept small in training;
- :func:`mrla_value_map`: the value map ``act(dwconv3x3(x))`` alone (the
  core's kernels with a unit gate and no history), which MRLA-base uses.

The fused branch. In training the branch costs, besides the core, a statistics
pass of the norm, its normalisation, the residual add and their backward
passes, and it keeps the core's output for the norm's backward. Here one op
writes ``x + batch_norm(z)`` from one read of the maps (on the CPU the core
output ``z`` of a block of channels stays in cache between the statistics and
the output), and the backward recomputes ``z`` from ``x`` (a 3x3 depthwise
convolution is cheaper than a stored map) and turns the incoming gradient into
the core's through the norm's coefficients on the fly: ``z`` is never stored.

The value map. The light-core kernels compute it when given a unit gate and no
history; PyTorch's own depthwise convolution is slow on the CPU in NCHW, which
is where MRLA-base spends most of its extra time without this op.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from .batch_norm_stats import update_running_stats
from .checks import check_batch_norm_input, check_folded_norm, check_value_act
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
            return _norm_double_backward(ctx, grad_out)
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


def _norm_double_backward(ctx, grad_out):
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


def _value_operands(x: Tensor, value_weight: Tensor):
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
        return load_ext().mrla_light_forward(*_value_operands(x, value_weight),
                                             none, none,
                                             ACT_CODES[value_act], False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, value_weight = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*composition_grads(
                (x, value_weight), grad_out,
                lambda: mrla_value(x, value_weight, ctx.value_act)), None)
        ops = _value_operands(x, value_weight)
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

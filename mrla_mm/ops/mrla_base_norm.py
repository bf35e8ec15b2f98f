"""MRLA-base branch of a ResNet block:
``x + relu(batch_norm(readout(q, keys, values)))``, kept small in training.

Unfused, each block keeps for the backward its value map, the readout (the
norm's input), the norm's output (the ReLU's) and the block output; and
the value map stays alive for the rest of the training step because every
later readout of the stage saves it. Here the readout, the norm and the
ReLU are recomputed in the backward instead of kept. Optionally every value
map is recomputed too, from the map it was computed from (the block's
``o``, which the block's ReLU saves already) and its depthwise kernel: the
value maps then live only while the stage's forward needs them, and of
MRLA-base's maps the training step saves only the block output. That costs
compute: the backward of layer ``t`` of a stage recomputes ``t`` value maps
(depthwise 3x3 passes).
"""
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from .batch_norm_add_relu import RecomputedMaps
from .checks import (
    check_batch_norm_input,
    check_given_together,
    check_value_act,
)
from .ext_loader import use_compiled
from .mrla_base import _fused_inference, readout_backward
from .mrla_math import base_combine, base_weights, mrla_value
from .mrla_value import mrla_value_map

# Recomputed value maps released per this many in the backward.
RELEASE_CHUNK = 4


def _branch_pytorch(weights, values, running_mean, running_var, weight,
                    bias, training, momentum, eps) -> Tensor:
    return torch.relu(
        F.batch_norm(
            base_combine(weights, values), running_mean, running_var, weight,
            bias, training, momentum, eps))


def mrla_base_batch_norm_pytorch(x: Tensor, weights: Tensor,
                                 values: Sequence[Tensor],
                                 running_mean: Optional[Tensor],
                                 running_var: Optional[Tensor],
                                 weight: Optional[Tensor],
                                 bias: Optional[Tensor], training: bool,
                                 momentum: float, eps: float) -> Tensor:
    """The pure-PyTorch composition of :func:`mrla_base_batch_norm`, from
    the softmax weights ``[B, G, T]``."""
    return x + _branch_pytorch(weights, values, running_mean, running_var,
                               weight, bias, training, momentum, eps)


class MRLABaseNormFunction(Function):
    """``x + relu(batch_norm(sum_s weights[:, :, s] * values[s]))`` that
    keeps neither the readout nor the norm's output, and with ``recompute``
    not the value maps either.

    Inputs after the flags: ``x``, the softmax weights, the norm's weight
    and bias, its running statistics, then the ``T`` value maps; with
    ``recompute`` also their ``T`` sources and ``T`` depthwise kernels
    (``values[s] == act(dwconv3x3(sources[s], kernels[s]))``), which are
    kept instead of the values. First-order gradients use the compiled
    readout; a double backward goes through the PyTorch composition.
    """

    @staticmethod
    def forward(ctx, training: bool, momentum: float, eps: float,
                value_act: str, recompute: bool, x: Tensor, weights: Tensor,
                weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor],
                running_var: Optional[Tensor], *maps: Tensor) -> Tensor:
        num = len(maps) // 3 if recompute else len(maps)
        readout = _fused_inference(weights, maps[:num], None, None, None)
        out = torch.native_batch_norm(readout, weight, bias, running_mean,
                                      running_var, training, momentum,
                                      eps)[0]
        out.relu_().add_(x)
        ctx.training, ctx.eps, ctx.value_act = training, eps, value_act
        ctx.recompute, ctx.num_values = recompute, num
        kept = maps[num:] if recompute else maps
        # Sources that can be rebuilt are kept as their recipes and rebuilt
        # one at a time in the backward (see RecomputedMaps).
        ctx.recipes = [
            RecomputedMaps.recipe_of(m) if recompute and i < num else None
            for i, m in enumerate(kept)
        ]
        ctx.save_for_backward(
            weights, weight, bias, None if training else running_mean,
            None if training else running_var,
            *(None if r is not None else m
              for m, r in zip(kept, ctx.recipes)))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, weight, bias, running_mean, running_var, *maps = (
            ctx.saved_tensors)
        maps = [m if r is None else r for m, r in zip(maps, ctx.recipes)]
        differentiable = torch.is_grad_enabled()
        if ctx.recompute:
            value = mrla_value if differentiable else _value_no_grad
            values = []
            with torch.enable_grad() if differentiable else nullcontext():
                for s in range(ctx.num_values):
                    src = maps[s]
                    if not isinstance(src, Tensor):
                        src = src.compute()
                    values.append(
                        value(src, maps[ctx.num_values + s], ctx.value_act))
                    del src
        else:
            values = maps
        backward = (_differentiable_backward
                    if differentiable else _kernel_backward)
        grad_weights, grad_weight, grad_bias, grad_values = backward(
            ctx, grad_out, weights, weight, bias, running_mean, running_var,
            values)
        return (None, None, None, None, None, grad_out, grad_weights,
                grad_weight, grad_bias, None, None, *grad_values,
                *([None] * (len(maps) if ctx.recompute else 0)))


def _value_no_grad(source: Tensor, kernel: Tensor, value_act: str) -> Tensor:
    return mrla_value_map(source.detach(), kernel.detach(), value_act)


def _kernel_backward(ctx, grad_out, weights, weight, bias, running_mean,
                     running_var, values):
    readout = _fused_inference(weights, values, None, None, None)
    detached = [None if t is None else t.detach() for t in (weight, bias)]
    # The norm's output again, for the ReLU's mask, and with batch
    # statistics the statistics the forward normalised with.
    out, mean, invstd = torch.native_batch_norm(readout, *detached,
                                                running_mean, running_var,
                                                ctx.training, 0., ctx.eps)
    aten = torch.ops.aten
    grad_norm = aten.threshold_backward(grad_out, out, 0)
    del out
    wants = [
        True, weight is not None and ctx.needs_input_grad[7], bias
        is not None and ctx.needs_input_grad[8]
    ]
    grad_readout, grad_weight, grad_bias = aten.native_batch_norm_backward(
        grad_norm, readout, detached[0], running_mean, running_var, mean,
        invstd, ctx.training, ctx.eps, wants)
    del grad_norm, readout
    # CUDA's kernel may return the affine gradients although not asked
    # for; autograd refuses a gradient for an input that is None.
    grad_weight, grad_bias = (g if want else None
                              for g, want in zip((grad_weight, grad_bias),
                                                 wants[1:]))
    if not ctx.recompute:
        grad_weights, grad_values = readout_backward(grad_readout, weights,
                                                     values)
        return grad_weights, grad_weight, grad_bias, grad_values
    # Recomputed values are let go a few at a time as their gradients
    # appear (the gradient of each value depends on that value alone), so
    # that the two sets of maps do not peak together.
    parts, grad_values = [], []
    for start in range(0, len(values), RELEASE_CHUNK):
        chunk = values[start:start + RELEASE_CHUNK]
        values[start:start + RELEASE_CHUNK] = [None] * len(chunk)
        part, grads = readout_backward(
            grad_readout, weights[..., start:start + len(chunk)], chunk)
        del chunk
        parts.append(part)
        grad_values.extend(grads)
    return torch.cat(parts, -1), grad_weight, grad_bias, grad_values


def _differentiable_backward(ctx, grad_out, weights, weight, bias,
                             running_mean, running_var, values):
    """Gradients through the PyTorch composition, with their graph (double
    backward). With batch statistics the norm is re-run on the batch."""
    with torch.enable_grad():
        out = _branch_pytorch(weights, values, running_mean, running_var,
                              weight, bias, ctx.training, 0., ctx.eps)
        inputs = [weights, weight, bias, *values]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out,
                                         create_graph=True))
        grads = [
            next(grads) if t is not None and t.requires_grad else None
            for t in inputs
        ]
    return grads[0], grads[1], grads[2], grads[3:]


def _check_sources(values, sources, kernels) -> None:
    check_given_together('sources', sources, 'kernels', kernels)
    if sources is None:
        return
    if not len(values) == len(sources) == len(kernels):
        raise ValueError('values, sources and kernels must have one entry '
                         f'per layer, got {len(values)}, {len(sources)} and '
                         f'{len(kernels)}')
    for s, (v, src) in enumerate(zip(values, sources)):
        if src.shape != v.shape:
            raise ValueError(f'sources[{s}] must have the shape of '
                             f'values[{s}] {tuple(v.shape)}, got '
                             f'{tuple(src.shape)}')


def mrla_base_batch_norm(
        x: Tensor,
        q: Tensor,
        keys: Tensor,
        values: Sequence[Tensor],
        num_heads: int,
        *,
        sources: Optional[Sequence[Tensor]] = None,
        kernels: Optional[Sequence[Tensor]] = None,
        value_act: str = 'identity',
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        weight: Optional[Tensor] = None,
        bias: Optional[Tensor] = None,
        training: bool = False,
        momentum: float = 0.1,
        eps: float = 1e-5) -> Tensor:
    """``x + relu(batch_norm(O))``, ``O`` the MRLA-base readout of ``q``
    over ``keys`` and ``values`` (see :func:`mrla_base_readout`).

    The norm arguments are those of :func:`torch.nn.functional.batch_norm`
    and mean the same (batch statistics and an in-place running update with
    ``training``, else the running statistics). With the compiled
    extension serving the maps (see :mod:`mrla_mm.ops.ext_loader`), the
    backward recomputes the readout and the norm instead of keeping their
    outputs, and, given ``sources`` and ``kernels``, each value map from
    its source instead of keeping it; else this is the PyTorch
    composition.

    Args:
        x (Tensor): the map the branch is added to, ``[B, C, H, W]``.
        q (Tensor): query of the current layer, ``[B, C]``.
        keys (Tensor): keys of the layers so far, ``[B, T, C]``.
        values (Sequence[Tensor]): their ``T`` value maps.
        num_heads (int): number of heads ``G``.
        sources (Sequence[Tensor], optional): the map each value was
            computed from, with ``kernels``. Defaults to None: the values
            are kept for the backward.
        kernels (Sequence[Tensor], optional): the depthwise kernel
            ``[C, 1, 3, 3]`` of each value: ``values[s] ==
            mrla_value(sources[s], kernels[s], value_act)``.
        value_act (str): ``'identity'`` (ResNet) or ``'gelu'``.
        running_mean (Tensor, optional): ``[C]``.
        running_var (Tensor, optional): ``[C]``.
        weight (Tensor, optional): the norm's ``gamma`` ``[C]``.
        bias (Tensor, optional): the norm's ``beta`` ``[C]``.
        training (bool): normalise with the batch statistics.
        momentum (float): running-statistics update factor.
        eps (float): added to the variance.

    Returns:
        Tensor: ``[B, C, H, W]``.
    """
    check_value_act(value_act)
    if keys.shape[1] != len(values):
        raise ValueError(f'keys hold {keys.shape[1]} layers but values hold '
                         f'{len(values)}')
    _check_sources(values, sources, kernels)
    check_batch_norm_input(x, running_mean, running_var, training)
    weights = base_weights(q, keys, num_heads)
    if not use_compiled('mrla_base_batch_norm', (x, *values)):
        return mrla_base_batch_norm_pytorch(x, weights, values, running_mean,
                                            running_var, weight, bias,
                                            training, momentum, eps)
    recompute = sources is not None
    return MRLABaseNormFunction.apply(
        training, momentum, eps, value_act, recompute, x, weights, weight,
        bias, running_mean, running_var, *values,
        *((*sources, *kernels) if recompute else ()))

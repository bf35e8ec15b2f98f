"""MRLA-base ops: the Python side of the kernels in
csrc/pytorch/mrla_base.cpp.

- :func:`mrla_base_readout`: the softmax readout over a group's key/value
  cache, optionally with a folded eval-mode norm, its ReLU and the
  residual add;
- :func:`mrla_base_batch_norm`: the MRLA-base branch of a ResNet block,
  ``x + relu(batch_norm(readout(q, keys, values)))``, kept small in
  training.

The fused branch. Unfused, each block keeps for the backward its value map, the
readout (the norm's input), the norm's output (the ReLU's) and the block
output; and the value map stays alive for the rest of the training step because
every later readout of the stage saves it. Here the readout, the norm and the
ReLU are recomputed in the backward instead of kept. Optionally every value map
is recomputed too, from the map it was computed from (the block's ``o``, which
the block's ReLU saves already) and its depthwise kernel: the value maps then
live only while the stage's forward needs them, and of MRLA-base's maps the
training step saves only the block output. That costs compute: the backward of
layer ``t`` of a stage recomputes its ``t`` value maps (depthwise 3x3 passes) a
few at a time, so that they never all exist together: once for the readout and,
but for the last few, once more for its gradients.
"""
import itertools
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from .batch_norm_add_relu import BatchNormAddReLURecipe, RecomputedMaps
from .checks import (
    check_batch_norm_input,
    check_folded_norm,
    check_given_together,
    check_value_act,
)
from .double_backward import composition_grads
from .ext_loader import (
    acc_dtype,
    load_ext,
    map_format,
    needs_autograd,
    small_operand,
    use_compiled,
)
from .mrla_light import mrla_value_map
from .mrla_math import base_combine, base_weights, channel_affine, mrla_value

if TYPE_CHECKING:
    from .readout_gradients import ReadoutGradients

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
        return readout_inference(weights, values, scale, shift, residual)
    out = (MRLABaseReadoutFunction.apply(weights, *values)
           if compiled else base_combine(weights, values))
    if scale is not None:
        out = torch.relu(channel_affine(out, scale, shift))
    return out if residual is None else out + residual


def readout_inference(weights, values, scale, shift, residual):
    """Readout, folded norm, ReLU and residual in one pass, no autograd."""
    w, vals = _kernel_operands(weights, values)
    res = w.new_empty(0, dtype=vals[0].dtype) if residual is None else (
        residual.detach().to(vals[0].dtype).contiguous(
            memory_format=map_format(vals[0])))
    return load_ext().mrla_base_forward(w, vals,
                                        small_operand(scale, vals[0]),
                                        small_operand(shift, vals[0]), res)


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
    ``recompute`` also their ``T`` sources (maps, or recipes that rebuild
    them) and ``T`` depthwise kernels (``values[s] ==
    act(dwconv3x3(sources[s], kernels[s]))``), which are kept instead of
    the values. With ``gradients`` the layer's value gradient is gathered
    there (see :class:`ReadoutGradients`). First-order gradients use the
    compiled readout; a double backward goes through the PyTorch
    composition.
    """

    @staticmethod
    def forward(ctx, training: bool, momentum: float, eps: float,
                value_act: str, recompute: bool,
                gradients: Optional['ReadoutGradients'], x: Tensor,
                weights: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], *maps) -> Tensor:
        num = len(maps) // 3 if recompute else len(maps)
        ctx.training, ctx.eps, ctx.value_act = training, eps, value_act
        ctx.recompute, ctx.num_values = recompute, num
        # What needs a gradient, as autograd's needs_input_grad has it.
        ctx.affine_needs_grad = [
            t is not None and t.requires_grad for t in (weight, bias)
        ]
        ctx.values_need_grad = [v.requires_grad for v in maps[:num]]
        # Recomputed values come RELEASE_CHUNK at a time, and the forward
        # sums the readout in the same chunks; kept values are read at once.
        ctx.chunk = RELEASE_CHUNK if recompute else num
        readout = _readout(weights, _value_chunks(ctx, maps))[0]
        out = torch.native_batch_norm(readout, weight, bias, running_mean,
                                      running_var, training, momentum,
                                      eps)[0]
        del readout
        out.relu_().add_(x)
        kept = maps[num:] if recompute else maps
        # Sources that can be rebuilt are kept as their recipes and rebuilt
        # a few at a time in the backward (see RecomputedMaps).
        ctx.recipes = [
            _recipe(m) if recompute and i < num else None
            for i, m in enumerate(kept)
        ]
        ctx.save_for_backward(
            weights, weight, bias, None if training else running_mean,
            None if training else running_var,
            *(None if r is not None else m
              for m, r in zip(kept, ctx.recipes)))
        ctx.gradients = gradients
        if gradients is not None:
            gradients.join(num - 1, ctx)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, weight, bias, running_mean, running_var, *maps = (
            ctx.saved_tensors)
        maps = [m if r is None else r for m, r in zip(maps, ctx.recipes)]
        if ctx.recompute:
            # Recomputed values replace the kept ones from here on.
            maps = [None] * ctx.num_values + maps
        if torch.is_grad_enabled():
            grads = _differentiable_backward(ctx, grad_out, weights, weight,
                                             bias, running_mean,
                                             running_var, maps)
        else:
            grads = _kernel_backward(ctx, grad_out, weights, weight, bias,
                                     running_mean, running_var, maps)
        grad_weights, grad_weight, grad_bias, grad_values = grads
        return (None, None, None, None, None, None, grad_out, grad_weights,
                grad_weight, grad_bias, None, None, *grad_values,
                *([None] * (2 * ctx.num_values if ctx.recompute else 0)))


def _recipe(source) -> Optional[BatchNormAddReLURecipe]:
    if isinstance(source, BatchNormAddReLURecipe):
        return source
    return RecomputedMaps.recipe_of(source)


def _value_chunks(ctx, maps, starts=None, differentiable: bool = False):
    """``(start, values[start:start + ctx.chunk])`` for each of ``starts``
    (all, in order, by default): the kept values, or values recomputed
    from their sources chunk by chunk (each chunk made when asked for;
    with ``differentiable`` under autograd)."""
    num = ctx.num_values
    for start in range(0, num, ctx.chunk) if starts is None else starts:
        stop = min(num, start + ctx.chunk)
        if maps[start] is not None:
            yield start, list(maps[start:stop])
            continue
        chunk = []
        for s in range(start, stop):
            src = maps[num + s]
            if not isinstance(src, Tensor):
                # The layer's own source serves its block's later backward
                # nodes too (its value map's, its block end's), and the
                # previous layer's source that layer's backward, which in a
                # stage comes next.
                src = src.compute(keep=s >= num - 2 and not differentiable)
            kernel = maps[2 * num + s]
            if differentiable:
                with torch.enable_grad():
                    chunk.append(mrla_value(src, kernel, ctx.value_act))
            else:
                chunk.append(
                    mrla_value_map(src.detach(), kernel.detach(),
                                   ctx.value_act))
            del src
        yield start, chunk


def _readout(weights: Tensor, chunks, keep_from: Optional[int] = None):
    """The compiled readout summed chunk by chunk in order (the forward
    and the backward's recomputation sum in the same order, so that the
    norm sees the same map in both), and the chunk that starts at
    ``keep_from``, held for the caller."""
    out = kept = None
    for start, chunk in chunks:
        out = readout_inference(weights[..., start:start + len(chunk)], chunk,
                               None, None, out)
        if start == keep_from:
            kept = chunk
        del chunk
    return out, kept


def _kernel_backward(ctx, grad_out, weights, weight, bias, running_mean,
                     running_var, maps):
    starts = list(range(0, ctx.num_values, ctx.chunk))
    # The last chunk of values serves the readout's gradients too, which
    # take the chunks in reverse: values of up to RELEASE_CHUNK layers are
    # recomputed once, not twice.
    readout, last = _readout(weights, _value_chunks(ctx, maps), starts[-1])
    detached = [None if t is None else t.detach() for t in (weight, bias)]
    # The norm's output again, for the ReLU's mask, and with batch
    # statistics the statistics the forward normalised with.
    out, mean, invstd = torch.native_batch_norm(readout, *detached,
                                                running_mean, running_var,
                                                ctx.training, 0., ctx.eps)
    aten = torch.ops.aten
    grad_norm = aten.threshold_backward(grad_out, out, 0)
    del out
    wants = [True, *ctx.affine_needs_grad]
    grad_readout, grad_weight, grad_bias = aten.native_batch_norm_backward(
        grad_norm, readout, detached[0], running_mean, running_var, mean,
        invstd, ctx.training, ctx.eps, wants)
    del grad_norm, readout
    # CUDA's kernel may return the affine gradients although not asked
    # for; autograd refuses a gradient for an input that is None.
    grad_weight, grad_bias = (g if want else None
                              for g, want in zip((grad_weight, grad_bias),
                                                 wants[1:]))
    layer, store = ctx.num_values - 1, ctx.gradients
    needed = ctx.values_need_grad
    # Earlier layers that gather their value gradient in the store take
    # this layer's share there, when their own backward runs.
    takers = {
        s
        for s in range(layer)
        if needed[s] and store is not None and store.joined(s)
    }
    # With a store, this layer's value gradient is gathered there too; the
    # kernel writes none of the gathered ones (it reads those values for
    # the weights' gradient only).
    gathered = takers | ({layer} if store is not None else set())
    wanted = [needed[s] and s not in gathered for s in range(layer + 1)]
    # Values (recomputed ones a few at a time) are let go as their
    # gradients appear, so that the two sets of maps do not peak together.
    parts, grad_values = [], [None] * ctx.num_values
    chunks = _value_chunks(ctx, maps, starts[-2::-1])
    for start, chunk in itertools.chain([(starts[-1], last)], chunks):
        last = None
        part, grad_values[start:start + len(chunk)] = readout_backward(
            grad_readout, weights[..., start:start + len(chunk)], chunk,
            wanted[start:start + len(chunk)])
        del chunk
        parts.append(part)
    if store is not None:
        own = store.exchange(layer, grad_readout, weights, takers)
        grad_values[layer] = own if needed[layer] else None
    return torch.cat(parts[::-1], -1), grad_weight, grad_bias, grad_values


def _differentiable_backward(ctx, grad_out, weights, weight, bias,
                             running_mean, running_var, maps):
    """Gradients through the PyTorch composition, with their graph (double
    backward), every value's gradient returned here. With batch
    statistics the norm is re-run on the batch."""
    values = [
        v for _, chunk in _value_chunks(ctx, maps, differentiable=True)
        for v in chunk
    ]
    grads = composition_grads(
        (weights, weight, bias, *values), grad_out,
        lambda: _branch_pytorch(weights, values, running_mean, running_var,
                                weight, bias, ctx.training, 0., ctx.eps))
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
        if not isinstance(src, (Tensor, BatchNormAddReLURecipe)):
            raise TypeError(f'sources[{s}] must be a Tensor or a '
                            'BatchNormAddReLURecipe, got '
                            f'{type(src).__name__}')
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
        sources: Optional[Sequence[Union[Tensor,
                                         BatchNormAddReLURecipe]]] = None,
        kernels: Optional[Sequence[Tensor]] = None,
        gradients: Optional['ReadoutGradients'] = None,
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
        sources (Sequence[Tensor | BatchNormAddReLURecipe], optional):
            the map each value was computed from, or the recipe that
            rebuilds it, with ``kernels``. Defaults to None: the values
            are kept for the backward.
        kernels (Sequence[Tensor], optional): the depthwise kernel
            ``[C, 1, 3, 3]`` of each value: ``values[s] ==
            mrla_value(sources[s], kernels[s], value_act)``.
        gradients (ReadoutGradients, optional): the store of the group's
            layers (one per forward pass of a group, shared by its
            layers), where this layer's value gradient is gathered in the
            backward instead of accumulated from the first later layer's
            backward on. Defaults to None.
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
        training, momentum, eps, value_act, recompute, gradients, x,
        weights, weight, bias, running_mean, running_var, *values,
        *((*sources, *kernels) if recompute else ()))

"""The end of a residual block, ``relu(batch_norm(x) + identity)``, with
its output recomputed in the backward instead of stored.

A ResNet block with MRLA keeps two maps of the block's width where the
plain block keeps one: the body's output ``o`` (saved by the body's ReLU
and by the MRLA branch, which reads it) and the block output ``o +
branch`` (saved by the next block). ``o`` is cheap to recompute from what
the step keeps anyway, the last convolution's output (saved by its norm)
and the shortcut, so here it is not stored: the op's own backward rebuilds
it for the ReLU's mask, and :class:`RecomputedMaps` has every other op
that saves ``o`` keep this recipe in its place.
"""
import threading
import weakref
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from .batch_norm_stats import update_running_stats
from .checks import check_batch_norm_input, check_feature_map
from .double_backward import composition_grads
from .torch_internals import add_relu_, tensor_identity


def _block_end(x: Tensor, identity: Tensor, weight: Optional[Tensor],
               bias: Optional[Tensor], mean: Tensor, var: Tensor,
               eps: float) -> Tensor:
    """``relu(batch_norm(x) + identity)`` with given statistics, outside
    autograd; deterministic, so that the backward rebuilds the forward's
    output bit for bit."""
    weight, bias = (None if t is None else t.detach() for t in (weight, bias))
    out = torch.native_batch_norm(x.detach(), weight, bias, mean, var, False,
                                  0., eps)[0]
    return add_relu_(out, identity.detach())


class BatchNormAddReLURecipe:
    """What rebuilds ``relu(batch_norm(x) + identity)``: the references
    keep no map alive that the step does not keep anyway.

    Once bound to the op's autograd context, ``x`` and ``identity`` are
    read from the op's saved tensors, so that they go when the op's
    backward lets them go, however long others hold the recipe.
    """

    def __init__(self, x: Tensor, identity: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], mean: Tensor, var: Tensor,
                 eps: float):
        self._maps: Optional[tuple] = (x, identity)
        self._ctx = None
        self.shape = x.shape
        self.weight, self.bias = weight, bias
        self.mean, self.var, self.eps = mean, var, eps

    def bind(self, ctx) -> None:
        """Read ``x`` and ``identity`` from ``ctx``'s first two saved
        tensors from now on."""
        self._ctx, self._maps = ctx, None

    def compute(self, keep: bool = False) -> Tensor:
        """The map. With ``keep`` (a bound recipe) it is held until the
        op's own backward, which takes it for the ReLU's mask instead of
        rebuilding it, and the calls until then get it too: one rebuild
        serves them all."""
        if self._ctx is not None and self._ctx.kept is not None:
            return self._ctx.kept
        x, identity = (self._maps if self._maps is not None else
                       self._ctx.saved_tensors[:2])
        out = _block_end(x, identity, self.weight, self.bias, self.mean,
                         self.var, self.eps)
        if keep and self._ctx is not None:
            self._ctx.kept = out
        return out


class BatchNormAddReLUFunction(Function):
    """``relu(batch_norm(x) + identity)`` from given statistics, which
    keeps its inputs and the statistics, not its output.

    With ``batch_stats`` the statistics are ``x``'s own (their dependence
    on ``x`` is in the backward); else they are constants (running
    statistics). First-order gradients come from ATen's batch norm
    backward; a double backward goes through the PyTorch composition.
    """

    @staticmethod
    def forward(ctx, x: Tensor, identity: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], mean: Tensor, var: Tensor,
                invstd: Tensor, batch_stats: bool, eps: float,
                recipe: BatchNormAddReLURecipe) -> Tensor:
        ctx.batch_stats, ctx.eps = batch_stats, eps
        ctx.save_for_backward(x, identity, weight, bias, mean, var, invstd)
        ctx.kept = None
        out = recipe.compute()
        if any(ctx.needs_input_grad):
            recipe.bind(ctx)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, identity, weight, bias, mean, var, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_out)
        out, ctx.kept = ctx.kept, None
        if out is None:
            out = _block_end(x, identity, weight, bias, mean, var, ctx.eps)
        grad_sum = torch.ops.aten.threshold_backward(grad_out, out, 0)
        del out
        wants = [
            ctx.needs_input_grad[0], weight is not None
            and ctx.needs_input_grad[2], bias is not None
            and ctx.needs_input_grad[3]
        ]
        grads = (None, None, None)
        if any(wants):
            grads = torch.ops.aten.native_batch_norm_backward(
                grad_sum, x,
                None if weight is None else weight.detach(), mean, var, mean,
                invstd, ctx.batch_stats, ctx.eps, wants)
            # A kernel may return what was not asked for; autograd refuses
            # a gradient for an input that is None.
            grads = [g if want else None for g, want in zip(grads, wants)]
        return (grads[0], grad_sum if ctx.needs_input_grad[1] else None,
                grads[1], grads[2], None, None, None, None, None, None)


def _differentiable_backward(ctx, grad_out: Tensor):
    """Gradients through the PyTorch composition, with their graph (double
    backward). With batch statistics the norm is re-run on the batch."""
    x, identity, weight, bias, mean, var, _ = ctx.saved_tensors
    stats = (None, None) if ctx.batch_stats else (mean, var)

    def composition():
        z = F.batch_norm(x, *stats, weight, bias, ctx.batch_stats, 0.,
                         ctx.eps)
        return torch.relu(z + identity)

    return (*composition_grads((x, identity, weight, bias), grad_out,
                               composition), None, None, None, None, None,
            None)


def batch_norm_add_relu(x: Tensor,
                        identity: Tensor,
                        *,
                        running_mean: Optional[Tensor],
                        running_var: Optional[Tensor],
                        weight: Optional[Tensor] = None,
                        bias: Optional[Tensor] = None,
                        training: bool = False,
                        momentum: float = 0.1,
                        eps: float = 1e-5,
                        maps: Optional['RecomputedMaps'] = None) -> Tensor:
    """``relu(batch_norm(x) + identity)``, its output not stored for the
    backward.

    The norm arguments are those of :func:`torch.nn.functional.batch_norm`
    and mean the same (batch statistics and an in-place running update with
    ``training``, else the running statistics).

    Args:
        x (Tensor): the residual branch before its last norm,
            ``[B, C, H, W]``.
        identity (Tensor): the shortcut, shaped as ``x``.
        running_mean (Tensor, optional): ``[C]``.
        running_var (Tensor, optional): ``[C]``.
        weight (Tensor, optional): the norm's ``gamma`` ``[C]``.
        bias (Tensor, optional): the norm's ``beta`` ``[C]``.
        training (bool): normalise with the batch statistics.
        momentum (float): running-statistics update factor.
        eps (float): added to the variance.
        maps (RecomputedMaps, optional): where to register the output, so
            that the other ops that save it keep its recipe instead.

    Returns:
        Tensor: ``[B, C, H, W]``.
    """
    # x sets the channels; only its rank is checked.
    check_feature_map(x, x.shape[1] if x.dim() == 4 else 0, 'x')
    if identity.shape != x.shape:
        raise ValueError(f'identity must have the shape of x '
                         f'{tuple(x.shape)}, got {tuple(identity.shape)}')
    check_batch_norm_input(x, running_mean, running_var, training)
    if training:
        mean, var = update_running_stats(x, running_mean, running_var,
                                         momentum)
    else:
        mean, var = running_mean.detach(), running_var.detach()
    invstd = torch.rsqrt(var + eps)
    recipe = BatchNormAddReLURecipe(x, identity, weight, bias, mean, var,
                                    eps)
    out = BatchNormAddReLUFunction.apply(x, identity, weight, bias, mean, var,
                                         invstd, training, eps, recipe)
    if maps is not None:
        maps.register(out, recipe)
    return out


class RecomputedMaps:
    """While active (a context manager), every op that saves a registered
    map for the backward keeps its recipe instead, and the backward
    rebuilds the map where it is needed.

    Built on :func:`torch.autograd.graph.saved_tensors_hooks`; a map is
    recognised by its storage, shape, strides and version, so a map
    changed in place after it was registered is saved as it is. An op that
    saves many maps and reads them one at a time in its backward asks
    :meth:`recipe_of` and keeps the recipes itself, so that the rebuilt
    maps do not all exist at once.
    """

    _active = threading.local()

    def __init__(self):
        self._maps: Dict[int, tuple] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, self._unpack)

    def register(self, out: Tensor, recipe: BatchNormAddReLURecipe) -> None:
        """Have ops save ``recipe`` in place of ``out`` from now on.

        ``out`` is held weakly: a map no longer used lets its memory go,
        and a new tensor there is not taken for it.
        """
        address, version = tensor_identity(out)
        self._maps[address] = (weakref.ref(out), version, recipe)

    @classmethod
    def recipe_of(cls, t: Tensor) -> Optional[BatchNormAddReLURecipe]:
        """The recipe of ``t`` in the innermost active instance, if any."""
        stack: List['RecomputedMaps'] = getattr(cls._active, 'stack', [])
        return stack[-1]._recipe(t) if stack else None

    def __enter__(self) -> 'RecomputedMaps':
        self._hooks.__enter__()
        if not hasattr(self._active, 'stack'):
            self._active.stack = []
        self._active.stack.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self._active.stack.remove(self)
        self._hooks.__exit__(*exc)
        # The maps held here must not outlive the forward that made them.
        self._maps.clear()

    def _recipe(self, t: Tensor) -> Optional[BatchNormAddReLURecipe]:
        if t.layout != torch.strided or not t.numel():
            return None
        address, version_now = tensor_identity(t)
        entry = self._maps.get(address)
        if entry is None:
            return None
        ref, version, recipe = entry
        out = ref()
        if (out is None or t.shape != out.shape or t.stride() != out.stride()
                or t.dtype != out.dtype or version_now != version):
            return None
        return recipe

    def _pack(self, t: Tensor):
        recipe = self._recipe(t)
        return t if recipe is None else recipe

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, BatchNormAddReLURecipe):
            return packed.compute(keep=True)
        return packed

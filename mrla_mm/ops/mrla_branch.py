"""How the MRLA branch of a residual block and the block's end run.

A block hands its MRLA layer, the layer's norm, its drop path and its
history here (``O^{t-1}``'s stand-in for MRLA-light, the stage's cache for
MRLA-base) and gets ``x + branch`` back; the ops' routing table
(:data:`mrla_mm.ops.ext_loader.ROUTES`) says whether a kernel serves the
maps. The branch runs one of three ways:

- folded: an eval-mode BatchNorm becomes a per-channel ``scale`` and
  ``shift`` that the kernel applies with the residual add in its one pass
  (no autograd, the block in eval mode);
- fused: the kernel applies the BatchNorm (batch or running statistics)
  and the residual add and stores none of the branch's maps for the
  backward (a BatchNorm that does not synchronise across processes, no
  active drop path);
- plain: layer, norm (and ReLU for MRLA-base), drop path, add, each its
  own op: any norm, an active drop path, or no kernel for the maps.

The block's end, ``relu(tail(conv_out) + identity)`` with its channel
means, likewise folds an eval-mode last norm into the pooling kernel.
"""
import contextlib
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .batch_norm_add_relu import RecomputedMaps, batch_norm_add_relu
from .batch_norm_stats import advance_batch_norm
from .ext_loader import exporting, use_compiled
from .residual_relu_pool import residual_relu_pool

# The ops a branch's folded and fused ways run, by the kind of history.
_LIGHT_OPS = ('mrla_light_core', 'mrla_light_batch_norm')
_BASE_OPS = ('mrla_base_readout', 'mrla_base_batch_norm')


def add_mrla_branch(x: Tensor,
                    layer: nn.Module,
                    norm: nn.Module,
                    drop_path: nn.Module,
                    history,
                    *,
                    training: bool,
                    descriptor: Optional[Tensor] = None) -> Tensor:
    """``x + drop_path(norm(layer(x, history)))`` for MRLA-light, ``x +
    drop_path(relu(norm(layer(x, history))))`` for MRLA-base.

    Args:
        x (Tensor): the block output before MRLA, ``[B, C, H, W]``.
        layer (nn.Module): an MRLA-light or MRLA-base layer.
        norm (nn.Module): the branch's norm.
        drop_path (nn.Module): the branch's drop path (``nn.Identity``
            when there is none).
        history (Tensor | MRLACache): the stand-in for ``O^{t-1}``
            (a map shaped as ``x``) for MRLA-light, the stage's cache for
            MRLA-base.
        training (bool): whether the block is in training mode.
        descriptor (Tensor, optional): ``x``'s channel means ``[B, C]``
            when the caller has them.

    Returns:
        Tensor: ``[B, C, H, W]``.
    """
    light = isinstance(history, Tensor)
    fold_op, fuse_op = _LIGHT_OPS if light else _BASE_OPS
    folded = fold_batch_norm(norm, x, fold_op, training)
    if folded is not None:
        # The norm (its ReLU), the branch and the residual add in one pass.
        return layer(
            x,
            history,
            scale=folded[0],
            shift=folded[1],
            add_input=True,
            descriptor=descriptor)
    active_drop_path = training and not isinstance(drop_path, nn.Identity)
    if (not active_drop_path and isinstance(norm, _BatchNorm)
            and not (norm.training and isinstance(norm, nn.SyncBatchNorm))
            and use_compiled(fuse_op, (x, ))):
        # In training the branch's maps are then never stored.
        return layer(x, history, descriptor=descriptor, norm=norm)
    branch = norm(layer(x, history, descriptor=descriptor))
    if not light:
        branch = F.relu(branch, inplace=True)
    return x + drop_path(branch)


def residual_block_end(
    conv_out: Tensor,
    identity: Tensor,
    tail: Callable[[Tensor], Tensor],
    *,
    norm: Optional[nn.Module],
    training: bool,
    maps: Optional[RecomputedMaps] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    """``o = relu(tail(conv_out) + identity)`` and ``o``'s channel means
    (MRLA's descriptor), or None for them with ``maps``.

    Args:
        conv_out (Tensor): the residual branch up to its last convolution.
        identity (Tensor): the shortcut, shaped as ``conv_out``.
        tail (callable): what follows the last convolution.
        norm (nn.Module, optional): the last norm when ``tail`` is that
            norm alone; an eval-mode BatchNorm is then folded into the
            pooling kernel in inference.
        training (bool): whether the block is in training mode.
        maps (RecomputedMaps, optional): the stage's recomputed maps, for
            a block whose ``tail`` is a BatchNorm and that recomputes
            ``o`` in the backward instead of storing it (see
            :func:`batch_norm_add_relu`).

    Returns:
        tuple[Tensor, Tensor | None]: ``o`` and its means ``[B, C]``.
    """
    if maps is not None:
        return batch_norm_add_relu(
            conv_out, identity, maps=maps, **advance_batch_norm(norm)), None
    folded = None if norm is None else fold_batch_norm(
        norm, conv_out, 'residual_relu_pool', training)
    scale, shift = folded or (None, None)
    if folded is None:
        conv_out = tail(conv_out)
    # In place, as mmdet's blocks add their shortcut: no new map.
    return residual_relu_pool(
        conv_out, identity, inplace=True, scale=scale, shift=shift)


def fold_batch_norm(norm: nn.Module, x: Tensor, op: str,
                    training: bool) -> Optional[Tuple[Tensor, Tensor]]:
    """``(scale, shift)`` of ``norm`` when it is an eval-mode BatchNorm
    that the compiled ``op`` can apply to ``x`` in its own pass (no
    gradient, the block in eval mode); else None.

    The PyTorch path keeps the norm module, so that what it runs (and
    what a FLOP counter sees) is the unfused model.
    """
    if (training or torch.is_grad_enabled()
            or not isinstance(norm, _BatchNorm) or norm.training
            or not norm.track_running_stats or norm.running_var is None
            or not use_compiled(op, (x, ))):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    return scale, shift


@contextlib.contextmanager
def stage_recomputed_maps(wanted: bool) -> Iterator[Union[RecomputedMaps,
                                                          None]]:
    """The :class:`RecomputedMaps` of a stage whose blocks recompute
    their MRLA input (``wanted``) in a training step; None where nothing
    is recomputed: without autograd, under ``torch.compile`` (the compiler
    plans what to keep and recompute) or in an export (no backward)."""
    if (not wanted or not torch.is_grad_enabled()
            or torch.compiler.is_compiling() or exporting()):
        yield None
        return
    with RecomputedMaps() as maps:
        yield maps

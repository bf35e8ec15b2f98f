"""A BatchNorm module's running statistics, as the fused ops keep them.

The ops that apply a BatchNorm inside a fused pass take the module's
:func:`torch.nn.functional.batch_norm` arguments from
:func:`advance_batch_norm` and update the running statistics as the
module's own forward would, through :func:`update_running_stats`.
"""
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


def advance_batch_norm(norm: _BatchNorm) -> Dict[str, Any]:
    """Advance ``norm``'s ``num_batches_tracked`` as its forward does and
    return the :func:`torch.nn.functional.batch_norm` arguments of that
    forward, as keywords.

    For kernels that apply a BatchNorm module's function inside a fused
    pass (see :func:`mrla_mm.ops.mrla_light.mrla_light_batch_norm`):
    the result, the running statistics and their update are the module's.
    """
    if not isinstance(norm, _BatchNorm):
        raise TypeError('norm must be a BatchNorm module, got '
                        f'{type(norm).__name__}')
    momentum = 0. if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and (
            norm.num_batches_tracked is not None):
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            # Cumulative moving average.
            momentum = 1. / float(norm.num_batches_tracked)
    tracked = not norm.training or norm.track_running_stats
    return dict(
        running_mean=norm.running_mean if tracked else None,
        running_var=norm.running_var if tracked else None,
        weight=norm.weight,
        bias=norm.bias,
        training=norm.training or (norm.running_mean is None
                                   and norm.running_var is None),
        momentum=momentum,
        eps=norm.eps)


def update_running_stats(x: Tensor,
                         running_mean: Optional[Tensor],
                         running_var: Optional[Tensor],
                         momentum: float,
                         mean: Optional[Tensor] = None,
                         var: Optional[Tensor] = None
                         ) -> Tuple[Tensor, Tensor]:
    """The batch mean and biased variance ``[C]``, and the in-place update
    of ``running_mean`` and ``running_var`` (when given) with ``momentum``
    that a training BatchNorm makes (with the unbiased variance).

    The statistics are those of the map ``x`` ``[B, C, H, W]``: computed
    here in one pass (ATen's ``batch_norm_update_stats``, whose update is
    ``F.batch_norm``'s), or given as ``mean`` and ``var`` by a kernel that
    took them in its own pass over an ``x`` it never stored (``x`` then
    gives their count only).
    """
    if mean is None:
        with torch.no_grad():
            return torch.batch_norm_update_stats(x, running_mean,
                                                 running_var, momentum)
    if running_mean is not None:
        count = x.numel() // x.shape[1]
        running_mean.mul_(1 - momentum).add_(
            mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(
            (var * count / (count - 1)).to(running_var.dtype),
            alpha=momentum)
    return mean, var

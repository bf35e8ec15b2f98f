from typing import Any, Dict

from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_args(norm: _BatchNorm) -> Dict[str, Any]:
    """The :func:`torch.nn.functional.batch_norm` arguments ``norm`` would
    call it with now, as keywords; advances ``num_batches_tracked`` as the
    module's own forward does.

    For kernels that apply a BatchNorm module's function inside a fused
    pass (see :func:`mrla_mm.ops.mrla_light_norm.mrla_light_batch_norm`):
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

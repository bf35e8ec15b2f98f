from contextlib import contextmanager

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.optim import OptimWrapper
from torch import nn

CPU_AMP_DTYPES = ('bfloat16', )


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed-precision training on the CPU: bfloat16 autocast.

    mmengine's :class:`AmpOptimWrapper` requires a GPU (it builds a CUDA
    ``GradScaler``). On the CPU, autocast supports bfloat16, whose exponent
    range equals float32's, so no loss scaling is needed: this wrapper runs
    the forward pass (and hence the loss) under
    ``torch.autocast('cpu', dtype=torch.bfloat16)`` and steps as
    :class:`OptimWrapper` does. Parameters, gradients and optimizer state
    stay float32.

    Args:
        dtype (str): Autocast dtype; only ``'bfloat16'``.
        **kwargs: Arguments of :class:`OptimWrapper`.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs):
        if dtype not in CPU_AMP_DTYPES:
            raise ValueError(f'dtype of CPUAmpOptimWrapper must be one of '
                             f'{CPU_AMP_DTYPES}, got {dtype!r}')
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                'cpu', dtype=self.cast_dtype):
            yield

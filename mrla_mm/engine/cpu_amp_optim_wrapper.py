from contextlib import contextmanager
from typing import Optional, Sequence

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from torch import Tensor, nn

from mrla_mm.registry import CLS_OPTIM_WRAPPERS, DET_OPTIM_WRAPPERS

CPU_AMP_DTYPES = ('bfloat16', )
# Where a detector's or a classifier's convolutions are.
DEFAULT_AUTOCAST_MODULES = ('backbone', 'neck')


def _to_float32(output):
    """``output`` with its floating-point tensors cast to float32."""
    if isinstance(output, Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(o) for o in output)
    return output


@DET_OPTIM_WRAPPERS.register_module()
@CLS_OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed-precision training on the CPU: bfloat16 autocast.

    mmengine's :class:`AmpOptimWrapper` requires a GPU (it builds a CUDA
    ``GradScaler``). On the CPU, autocast supports bfloat16, whose exponent
    range equals float32's, so no loss scaling is needed. mmcv's CPU ops
    (NMS, RoIAlign) have no bfloat16 kernels, so autocast covers the
    submodules named in ``autocast_modules`` (by default the backbone and
    the neck, where the convolutions are) and their outputs return to
    float32 for the heads. Autocast is on only inside
    :meth:`optim_context`, i.e. in training forward passes; parameters,
    gradients and optimizer state stay float32.

    Args:
        dtype (str): Autocast dtype; only ``'bfloat16'``.
        autocast_modules (Sequence[str], optional): Names of the model's
            submodules to run under autocast; each must exist. Defaults to
            None: the ``backbone`` and, where the model has one (an
            mmpretrain ViT classifier has none), the ``neck``.
        **kwargs: Arguments of :class:`OptimWrapper`.
    """

    def __init__(self,
                 dtype: str = 'bfloat16',
                 autocast_modules: Optional[Sequence[str]] = None,
                 **kwargs):
        if dtype not in CPU_AMP_DTYPES:
            raise ValueError(f'dtype of CPUAmpOptimWrapper must be one of '
                             f'{CPU_AMP_DTYPES}, got {dtype!r}')
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)
        self.autocast_modules = (None if autocast_modules is None else
                                 tuple(autocast_modules))
        self._hooked = None
        self._active = False
        self._contexts = []

    def _hook(self, model: nn.Module) -> None:
        """Put autocast around the forward of ``autocast_modules``."""
        module = model.module if is_model_wrapper(model) else model
        children = dict(module.named_children())
        names = self.autocast_modules
        if names is None:
            names = [n for n in DEFAULT_AUTOCAST_MODULES if n in children]
        for name in names:
            if name not in children:
                raise ValueError(
                    f'autocast_modules names {name!r}, which '
                    f'{type(module).__name__} does not have; its '
                    f'submodules are {tuple(children)}')
            children[name].register_forward_pre_hook(self._enter)
            children[name].register_forward_hook(
                self._exit, always_call=True)
        self._hooked = model

    def _enter(self, module: nn.Module, args) -> None:
        if self._active:
            context = torch.autocast('cpu', dtype=self.cast_dtype)
            context.__enter__()
            self._contexts.append((module, context))

    def _exit(self, module: nn.Module, args, output):
        if self._contexts and self._contexts[-1][0] is module:
            self._contexts.pop()[1].__exit__(None, None, None)
            return _to_float32(output)
        return None

    @contextmanager
    def optim_context(self, model: nn.Module):
        if self._hooked is not model:
            self._hook(model)
        with super().optim_context(model):
            self._active = True
            try:
                yield
            finally:
                self._active = False

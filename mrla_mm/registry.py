"""The registries mrla_mm's modules are registered in.

mrla_mm opens no scope of its own: configs name its modules in the scope
they already use (``default_scope='mmdet'`` or ``'mmpretrain'``). MRLA
layers go into both ``MODELS``; each backbone into the registry of the
codebase whose base class it extends; the CPU mixed-precision optimizer
wrapper into both ``OPTIM_WRAPPERS``, so ``tools/train.py --amp`` finds it
for detectors and classifiers alike.
"""
from mmdet.registry import MODELS as DET_MODELS
from mmdet.registry import OPTIM_WRAPPERS as DET_OPTIM_WRAPPERS
from mmpretrain.registry import MODELS as CLS_MODELS
from mmpretrain.registry import OPTIM_WRAPPERS as CLS_OPTIM_WRAPPERS

__all__ = [
    'CLS_MODELS', 'CLS_OPTIM_WRAPPERS', 'DET_MODELS', 'DET_OPTIM_WRAPPERS'
]

"""The registries mrla_mm's modules are registered in.

MRLA layers go into both mmdet's and mmpretrain's ``MODELS``; each backbone
into the registry of the codebase whose base class it extends.
"""
from mmdet.registry import MODELS as DET_MODELS
from mmpretrain.registry import MODELS as CLS_MODELS

__all__ = ['DET_MODELS', 'CLS_MODELS']

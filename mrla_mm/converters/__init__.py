from .deit import build_deit_backbone, convert_deit
from .key_rules import FORMATS, CheckpointError
from .reference import (
    ARCHS,
    check_state_dict,
    convert,
    detect_arch,
    load_reference_checkpoint,
)
from .resnet import convert_resnet, resnet_depth

__all__ = [
    'ARCHS', 'FORMATS', 'CheckpointError', 'build_deit_backbone',
    'check_state_dict', 'convert', 'convert_deit', 'convert_resnet',
    'detect_arch', 'load_reference_checkpoint', 'resnet_depth'
]

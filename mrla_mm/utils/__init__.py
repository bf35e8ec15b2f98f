from .ckpt_convert import (
    ARCHS,
    CheckpointError,
    check_state_dict,
    convert,
    detect_arch,
    load_reference_checkpoint,
)

__all__ = [
    'ARCHS', 'CheckpointError', 'check_state_dict', 'convert', 'detect_arch',
    'load_reference_checkpoint'
]

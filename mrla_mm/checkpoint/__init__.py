from .integrity import (
    CheckpointHashError,
    register_integrity_check,
    verify_checkpoint_hash,
)
from .publish import PublishError, publish_checkpoint
from .safe_loading import allow_mmengine_checkpoints

__all__ = [
    'CheckpointHashError', 'PublishError', 'allow_mmengine_checkpoints',
    'publish_checkpoint', 'register_integrity_check', 'verify_checkpoint_hash'
]

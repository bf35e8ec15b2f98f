"""Layer-attention ops of MRLA. Importable with torch alone."""
from .batch_norm_add_relu import RecomputedMaps
from .batch_norm_stats import advance_batch_norm
from .checks import (
                     check_feature_map,
                     check_given_together,
                     check_kernel_size,
                     check_norm_excludes_fold,
                     check_value_act,
                     resolve_heads,
)
from .ext_loader import exporting
from .mrla_base import mrla_base_batch_norm, mrla_base_readout
from .mrla_branch import (
                     add_mrla_branch,
                     residual_block_end,
                     stage_recomputed_maps,
)
from .mrla_light import mrla_light_batch_norm, mrla_light_core, mrla_value_map
from .mrla_math import (
                     adaptive_kernel_size,
                     base_weights,
                     channel_conv1d,
                     channel_descriptor,
                     head_scores,
                     light_gate,
                     mrla_value,
                     query_key,
)
from .residual_relu_pool import residual_relu_pool

__all__ = [
    'RecomputedMaps', 'adaptive_kernel_size', 'add_mrla_branch',
    'advance_batch_norm', 'exporting', 'residual_block_end',
    'stage_recomputed_maps', 'check_feature_map', 'check_given_together',
    'check_kernel_size', 'check_norm_excludes_fold', 'check_value_act',
    'base_weights',
    'channel_conv1d', 'channel_descriptor', 'head_scores', 'light_gate',
    'mrla_base_batch_norm', 'mrla_base_readout',
    'mrla_light_batch_norm', 'mrla_light_core', 'mrla_value',
    'mrla_value_map', 'query_key',
    'residual_relu_pool', 'resolve_heads'
]

from .figures import layer_attention_figures, plot_layer_attention
from .layer_attention import (
    BaseGroupAttention,
    LayerAttention,
    LightGroupAttention,
    group_name,
)
from .recorder import LayerAttentionRecorder

__all__ = [
    'BaseGroupAttention', 'LayerAttention', 'LayerAttentionRecorder',
    'LightGroupAttention', 'group_name', 'layer_attention_figures',
    'plot_layer_attention'
]

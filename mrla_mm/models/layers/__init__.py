from .builder import MRLA_LAYER_TYPES, build_mrla_layer
from .mrla_base import MRLABase
from .mrla_cache import MRLACache
from .mrla_light import MRLALight

__all__ = [
    'MRLA_LAYER_TYPES', 'MRLABase', 'MRLACache', 'MRLALight',
    'build_mrla_layer'
]

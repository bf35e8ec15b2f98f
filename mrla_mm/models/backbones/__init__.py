from .mrla_block import MRLABlockMixin, mrla_stage_forward
from .mrla_resnet import (
                          MRLABasicBlock,
                          MRLABottleneck,
                          MRLAResLayer,
                          MRLAResNet,
)
from .mrla_resnet_cls import (
                          MRLAClsBasicBlock,
                          MRLAClsBottleneck,
                          MRLAClsResLayer,
                          MRLAClsResNet,
)
from .mrla_resnext import MRLAResNeXt, MRLAResNeXtBottleneck
from .mrla_vit import MRLATokenBranch, MRLAVisionTransformer
from .pretrained_init import (
                          PretrainedInitMixin,
                          load_pretrained_backbone,
                          skip_backbone_pretrained,
)

__all__ = [
    'MRLABasicBlock', 'MRLABlockMixin', 'MRLABottleneck', 'MRLAClsBasicBlock',
    'MRLAClsBottleneck', 'MRLAClsResLayer', 'MRLAClsResNet', 'MRLAResLayer',
    'MRLAResNeXt', 'MRLAResNeXtBottleneck', 'MRLAResNet', 'MRLATokenBranch',
    'MRLAVisionTransformer', 'PretrainedInitMixin',
    'load_pretrained_backbone', 'mrla_stage_forward',
    'skip_backbone_pretrained'
]

from mmdet.models.backbones.resnext import Bottleneck as ResNeXtBottleneck
from mmdet.models.backbones.resnext import ResNeXt

from mrla_mm.registry import DET_MODELS
from .mrla_resnet import MRLABottleneck, MRLAResLayer, MRLAResNetMixin


class MRLAResNeXtBottleneck(MRLABottleneck, ResNeXtBottleneck):
    """mmdet's grouped ResNeXt bottleneck with an MRLA branch."""


@DET_MODELS.register_module()
class MRLAResNeXt(MRLAResNetMixin, ResNeXt):
    """ResNeXt with MRLA after every residual block, for mmdet.

    Accepts every argument of mmdet's :class:`ResNeXt` (``groups``,
    ``base_width`` and those of ResNet) plus ``mrla_cfg`` and
    ``mrla_drop_path`` as in :class:`MRLAResNet`.
    """

    arch_settings = {
        50: (MRLAResNeXtBottleneck, (3, 4, 6, 3)),
        101: (MRLAResNeXtBottleneck, (3, 4, 23, 3)),
        152: (MRLAResNeXtBottleneck, (3, 8, 36, 3))
    }

    def make_res_layer(self, **kwargs) -> MRLAResLayer:
        return super().make_res_layer(
            groups=self.groups,
            base_width=self.base_width,
            base_channels=self.base_channels,
            **kwargs)

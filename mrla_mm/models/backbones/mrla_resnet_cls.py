from typing import Optional

import torch.nn as nn
from mmpretrain.models.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResLayer,
    ResNet,
)
from torch import Tensor

from mrla_mm.registry import CLS_MODELS
from .mrla_block import MRLABlockMixin, mrla_stage_forward
from .pretrained_init import PretrainedInitMixin


class MRLAClsBlockMixin(MRLABlockMixin):
    """The residual tail of mmpretrain's blocks: the last norm, then the
    block's drop path (stochastic depth)."""

    def residual_tail(self, out: Tensor) -> Tensor:
        return self.drop_path(getattr(self, self.last_norm)(out))

    @property
    def tail_is_norm(self) -> bool:
        return isinstance(self.drop_path, nn.Identity)


class MRLAClsBasicBlock(MRLAClsBlockMixin, BasicBlock):
    """mmpretrain's :class:`BasicBlock` with an MRLA branch."""

    last_conv, last_norm = 'conv2', 'norm2'

    def residual_conv(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.norm1(self.conv1(x))))


class MRLAClsBottleneck(MRLAClsBlockMixin, Bottleneck):
    """mmpretrain's :class:`Bottleneck` with an MRLA branch."""

    def residual_conv(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        return self.conv3(self.relu(self.norm2(self.conv2(out))))


class MRLAClsResLayer(ResLayer):
    """mmpretrain's :class:`ResLayer` whose blocks share an MRLA-base cache.
    """

    forward = mrla_stage_forward


@CLS_MODELS.register_module(name=['MRLAClsResNet', 'MRLAResNet'])
class MRLAClsResNet(PretrainedInitMixin, ResNet):
    """ResNet with MRLA after every residual block, for mmpretrain.

    The class is named for what it is, mmpretrain's ResNet with MRLA, apart
    from mmdet's :class:`MRLAResNet` in the same package. mmpretrain's
    MODELS knows it by that name and also as ``MRLAResNet``, the name its
    configs use (``configs/mrla_cls``): as mmdet and mmpretrain both call
    their ResNet ``ResNet``, a backbone config reads the same in both
    codebases and the default scope picks the class. Parameter names, and
    so checkpoints, do not depend on either name. Accepts every
    argument of mmpretrain's :class:`ResNet` (``drop_path_rate`` included,
    which drops the residual branches) and keeps its parameter names.
    A ``Pretrained`` ``init_cfg`` loads strictly, as in mmdet's
    :class:`MRLAResNet` (:mod:`.pretrained_init`).

    Args:
        depth (int): Depth of the ResNet, from {18, 34, 50, 101, 152}.
        mrla_cfg (dict, optional): MRLA layer of every block,
            ``dict(type='MRLALight')`` (default, d=32) or
            ``dict(type='MRLABase')`` (d=16), with the layer's arguments
            other than ``channels``. Where the default d does not
            divide a block's width, see
            :func:`mrla_mm.models.layers.builder.default_num_heads`. None
            gives a plain ResNet.
        mrla_drop_path (float): Drop-path rate of the MRLA branch of every
            block; the authors trained their ImageNet models with 0.2.
            Defaults to 0.
        mrla_recompute_input (bool, optional): Rebuild each block's MRLA
            input in the backward of a training step instead of storing
            it, as in mmdet's :class:`MRLAResNet`. Defaults to None: on for
            MRLA-base, off for MRLA-light.
        **kwargs: Arguments of mmpretrain's :class:`ResNet`.
    """

    arch_settings = {
        18: (MRLAClsBasicBlock, (2, 2, 2, 2)),
        34: (MRLAClsBasicBlock, (3, 4, 6, 3)),
        50: (MRLAClsBottleneck, (3, 4, 6, 3)),
        101: (MRLAClsBottleneck, (3, 4, 23, 3)),
        152: (MRLAClsBottleneck, (3, 8, 36, 3))
    }

    def __init__(self,
                 depth: int,
                 mrla_cfg: Optional[dict] = dict(type='MRLALight'),
                 mrla_drop_path: float = 0.,
                 mrla_recompute_input: Optional[bool] = None,
                 **kwargs):
        self.mrla_cfg = mrla_cfg
        self.mrla_drop_path = mrla_drop_path
        self.mrla_recompute_input = mrla_recompute_input
        self.check_pretrained_file(
            kwargs.get('init_cfg'), depth, mrla_cfg,
            kwargs.get('deep_stem', False))
        super().__init__(depth, **kwargs)

    def make_res_layer(self, **kwargs) -> MRLAClsResLayer:
        return MRLAClsResLayer(
            mrla_cfg=self.mrla_cfg,
            mrla_drop_path=self.mrla_drop_path,
            mrla_recompute_input=self.mrla_recompute_input,
            **kwargs)

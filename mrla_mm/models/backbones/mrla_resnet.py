from typing import Optional

from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.models.layers import ResLayer
from torch import Tensor

from mrla_mm.registry import DET_MODELS
from .mrla_block import MRLABlockMixin, mrla_stage_forward
from .pretrained_init import PretrainedInitMixin


class MRLABasicBlock(MRLABlockMixin, BasicBlock):
    """mmdet's :class:`BasicBlock` with an MRLA branch (ResNet-18/34)."""

    last_conv, last_norm = 'conv2', 'norm2'

    def residual_conv(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.norm1(self.conv1(x))))

    def residual_tail(self, out: Tensor) -> Tensor:
        return self.norm2(out)


class MRLABottleneck(MRLABlockMixin, Bottleneck):
    """mmdet's :class:`Bottleneck` with an MRLA branch (ResNet-50 and up)."""

    def residual_conv(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
        out = self.relu(self.norm2(self.conv2(out)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv2_plugin_names)
        return self.conv3(out)

    def residual_tail(self, out: Tensor) -> Tensor:
        out = self.norm3(out)
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv3_plugin_names)
        return out

    @property
    def tail_is_norm(self) -> bool:
        return not (self.with_plugins and self.after_conv3_plugin_names)


class MRLAResLayer(ResLayer):
    """mmdet's :class:`ResLayer` whose blocks share an MRLA-base cache."""

    forward = mrla_stage_forward


class MRLAResNetMixin(PretrainedInitMixin):
    """What turns an mmdet ResNet-family backbone into an MRLA one.

    A subclass lists MRLA blocks in ``arch_settings``; this mixin passes
    ``mrla_cfg`` to them, builds stages that share the base cache, keeps
    mmdet's default zero init of the last norm of every residual branch
    (mmdet only recognises its own block classes for that), and loads a
    ``Pretrained`` ``init_cfg`` strictly (:class:`PretrainedInitMixin`).
    """

    def __init__(self,
                 depth: int,
                 mrla_cfg: Optional[dict] = dict(type='MRLALight'),
                 mrla_drop_path: float = 0.,
                 mrla_recompute_input: Optional[bool] = None,
                 **kwargs):
        self.mrla_cfg = mrla_cfg
        self.mrla_drop_path = mrla_drop_path
        self.mrla_recompute_input = mrla_recompute_input
        pretrained = kwargs.get('pretrained')
        self.check_pretrained_file(
            kwargs.get('init_cfg') if pretrained is None else dict(
                type='Pretrained', checkpoint=pretrained), depth, mrla_cfg,
            kwargs.get('deep_stem', False))
        default_init = (kwargs.get('init_cfg') is None
                        and pretrained is None)
        self._zero_init_last_norm = default_init and kwargs.get(
            'zero_init_residual', True)
        super().__init__(depth=depth, **kwargs)

    def make_res_layer(self, **kwargs) -> MRLAResLayer:
        block = kwargs['block']
        if self._zero_init_last_norm:
            last = 'norm3' if issubclass(block, Bottleneck) else 'norm2'
            kwargs['init_cfg'] = dict(
                type='Constant', val=0, override=dict(name=last))
        return MRLAResLayer(
            mrla_cfg=self.mrla_cfg,
            mrla_drop_path=self.mrla_drop_path,
            mrla_recompute_input=self.mrla_recompute_input,
            **kwargs)


@DET_MODELS.register_module()
class MRLAResNet(MRLAResNetMixin, ResNet):
    """ResNet with MRLA after every residual block, for mmdet.

    Accepts every argument of mmdet's :class:`ResNet` (depth 18-152,
    ``deep_stem``, ``avg_down``, ``frozen_stages``, ``norm_eval``,
    ``with_cp``, ``dcn``, ``plugins``, ``init_cfg``, ...) and keeps its
    parameter names, so ImageNet ResNet checkpoints load with only the MRLA
    parameters missing. ``frozen_stages`` and ``norm_eval`` cover the MRLA
    parameters and norms of the stages they touch.

    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
    loads strictly (:mod:`.pretrained_init`): a missing local file fails
    when the backbone is built; a classifier checkpoint of
    :class:`MRLAClsResNet` (``tools/train.py configs/mrla_cls/...``), a
    converter output or a bare state dict load as they are; a checkpoint
    without MRLA weights (an ImageNet ResNet) starts every MRLA branch as
    the identity; any other mismatch is an error naming the key.

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
            block (the authors' ImageNet models used 0.2, their detection
            backbone 0). Defaults to 0.
        mrla_recompute_input (bool, optional): In training, rebuild each
            block's MRLA input in the backward instead of storing it next
            to the block output: one map of the block's width less per
            block, for an elementwise pass per read (see
            docs/benchmarks.md). Outputs and gradients are unchanged.
            Defaults to None: on for MRLA-base (ResNet-101's peak training
            memory 1.38x -> 1.17x of plain ResNet-101's on the CPU), off
            for MRLA-light.
        **kwargs: Arguments of mmdet's :class:`ResNet`.
    """

    arch_settings = {
        18: (MRLABasicBlock, (2, 2, 2, 2)),
        34: (MRLABasicBlock, (3, 4, 6, 3)),
        50: (MRLABottleneck, (3, 4, 6, 3)),
        101: (MRLABottleneck, (3, 4, 23, 3)),
        152: (MRLABottleneck, (3, 8, 36, 3))
    }

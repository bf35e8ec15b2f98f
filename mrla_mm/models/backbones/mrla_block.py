import warnings
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from mrla_mm.ops import (
    RecomputedMaps,
    add_mrla_branch,
    residual_block_end,
    stage_recomputed_maps,
)
from mrla_mm.ops.checks import check_bool, check_rate
from ..layers import MRLABase, MRLACache, MRLALight, build_mrla_layer

# The paper's dim_per_head for ResNets: 32 for light, 16 for base.
RESNET_DIM_PER_HEAD = dict(MRLALight=32, MRLABase=16)


class MRLABlockMixin:
    """Adds an MRLA branch to a residual block of mmdet or mmpretrain.

    The host block keeps all its modules and their names; MRLA adds
    ``mrla`` (the layer) and ``bn_mrla`` (its norm, named after
    ``norm_cfg``). With ``o = relu(residual(x) + identity)`` the block
    returns, as in the reference:

    - MRLA-light: ``o + drop_path(norm(mrla(o, identity)))``, the shortcut
      standing in for ``O^{t-1}``;
    - MRLA-base: ``o + drop_path(relu(norm(mrla(o, cache))))``.

    With ``with_cp`` the residual body is checkpointed and the MRLA branch
    is not: the base cache must see each layer exactly once.

    A host class provides ``residual_conv(x)``, its residual branch up to
    the last convolution, and ``residual_tail(out)``, what follows that
    convolution before the shortcut is added; it names the convolution in
    ``last_conv`` and its norm in ``last_norm``, and says in
    ``tail_is_norm`` whether the tail is that norm alone.

    Args:
        mrla_cfg (dict, optional): The MRLA layer, see
            :func:`build_mrla_layer`. None gives the plain block.
        mrla_drop_path (float): Drop-path rate of the MRLA branch.
        mrla_recompute_input (bool, optional): In a training step, do not
            store ``o``, MRLA's input, next to the block output: the
            backward rebuilds it from the last convolution's output and the
            shortcut (see :func:`mrla_mm.ops.batch_norm_add_relu`), one map
            of the block's width less per block for one more elementwise
            pass per read. Takes effect when the block runs in its stage
            (which holds the :class:`RecomputedMaps`), without ``with_cp``,
            and with a BatchNorm tail (``tail_is_norm``); True warns where
            it cannot. Outputs and gradients are the same either way, to
            float rounding. Defaults to None: on for MRLA-base, whose
            training memory it keeps near the plain ResNet's, off for
            MRLA-light, which has less to gain (docs/benchmarks.md).
        *args, **kwargs: Arguments of the host block.
    """

    last_conv, last_norm = 'conv3', 'norm3'

    def __init__(self,
                 *args,
                 mrla_cfg: Optional[dict] = None,
                 mrla_drop_path: float = 0.,
                 mrla_recompute_input: Optional[bool] = None,
                 **kwargs):
        check_rate('mrla_drop_path', mrla_drop_path)
        check_bool('mrla_recompute_input', mrla_recompute_input,
                   allow_none=True)
        super().__init__(*args, **kwargs)
        channels = getattr(self, self.last_conv).out_channels
        self.mrla = build_mrla_layer(mrla_cfg, channels, RESNET_DIM_PER_HEAD)
        self.mrla_recompute_input = (
            isinstance(self.mrla, MRLABase)
            if mrla_recompute_input is None else mrla_recompute_input)
        if self.mrla is None:
            return
        reason = self._recompute_input_blocker()
        if mrla_recompute_input and reason is not None:
            warnings.warn(
                f'mrla_recompute_input=True does not act in '
                f'{type(self).__name__}: {reason}; MRLA\'s input is stored '
                'there', stacklevel=2)
        self.mrla_norm_name, norm = build_norm_layer(
            kwargs.get('norm_cfg', dict(type='BN')), channels,
            postfix='_mrla')
        self.add_module(self.mrla_norm_name, norm)
        self.mrla_drop_path = DropPath(
            mrla_drop_path) if mrla_drop_path > 0 else nn.Identity()

    @property
    def mrla_norm(self) -> nn.Module:
        """nn.Module: the normalization layer of the MRLA branch."""
        return getattr(self, self.mrla_norm_name)

    @property
    def tail_is_norm(self) -> bool:
        """bool: whether ``residual_tail`` is the last norm alone."""
        return True

    def residual_conv(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def residual_tail(self, out: Tensor) -> Tensor:
        raise NotImplementedError

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch before the shortcut is added."""
        return self.residual_tail(self.residual_conv(x))

    def _recompute_input_blocker(self) -> Optional[str]:
        """Why ``mrla_recompute_input`` cannot act in this block now, or
        None."""
        norm = getattr(self, self.last_norm)
        if self.with_cp:
            return ('with_cp=True checkpoints the residual body, which then '
                    'runs without it')
        if not self.tail_is_norm:
            return ('a plugin or drop path follows the last norm of the '
                    'residual branch')
        if not isinstance(norm, _BatchNorm):
            return f'the last norm is {type(norm).__name__}, not a BatchNorm'
        if norm.training and isinstance(norm, nn.SyncBatchNorm):
            return ('the last norm is a SyncBatchNorm, which it leaves alone '
                    'while the norm trains (it acts with norm_eval)')
        return None

    def _recomputes_input(self) -> bool:
        return (self.mrla is not None and self.mrla_recompute_input
                and torch.is_grad_enabled()
                and self._recompute_input_blocker() is None)

    def _body(
        self,
        x: Tensor,
        maps: Optional[RecomputedMaps] = None
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """The block output before MRLA, its shortcut, and the output's
        channel means where they come with it (else None)."""
        identity = x if self.downsample is None else self.downsample(x)
        if self.mrla is None:
            out = self.residual(x)
            out += identity
            return self.relu(out), identity, None
        # MRLA's channel means are taken while the output is written (and
        # their gradient joins ReLU's backward).
        recompute = maps is not None and self._recomputes_input()
        out, descriptor = residual_block_end(
            self.residual_conv(x),
            identity,
            self.residual_tail,
            norm=getattr(self, self.last_norm) if self.tail_is_norm else None,
            training=self.training,
            maps=maps if recompute else None)
        return out, identity, descriptor

    def forward(self,
                x: Tensor,
                cache: Optional[MRLACache] = None,
                maps: Optional[RecomputedMaps] = None) -> Tensor:
        """Run the block; ``cache`` is its stage's MRLA-base cache, ``maps``
        its stage's :class:`RecomputedMaps` (both made by
        :func:`mrla_stage_forward`)."""
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            out, identity, descriptor = cp.checkpoint(
                self._body, x, use_reentrant=False)
        else:
            out, identity, descriptor = self._body(x, maps)
        if self.mrla is None:
            return out
        if isinstance(self.mrla, MRLABase) and cache is None:
            raise ValueError('an MRLA-base block needs the cache of its '
                             'stage; run it through its stage')
        # MRLA-light's history O^{t-1} is stood in for by the shortcut.
        return add_mrla_branch(
            out,
            self.mrla,
            self.mrla_norm,
            self.mrla_drop_path,
            identity if isinstance(self.mrla, MRLALight) else cache,
            training=self.training,
            descriptor=descriptor)


def mrla_stage_forward(blocks: nn.Sequential, x: Tensor) -> Tensor:
    """Run a stage of MRLA blocks, sharing one MRLA-base cache among them,
    and, in training, one :class:`RecomputedMaps` for the blocks that
    recompute their MRLA input."""
    first = blocks[0].mrla
    cache = first.new_cache() if isinstance(first, MRLABase) else None
    with stage_recomputed_maps(
            any(block.mrla_recompute_input for block in blocks)) as maps:
        for block in blocks:
            x = block(x, cache, maps)
    return x

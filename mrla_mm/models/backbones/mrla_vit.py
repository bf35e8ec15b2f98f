from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.utils import resize_pos_embed
from torch import Tensor

from mrla_mm.registry import CLS_MODELS
from ..layers import MRLABase, MRLACache, MRLALight, build_mrla_layer

# The paper's dim_per_head in DeiT, for both versions.
VIT_DIM_PER_HEAD = dict(MRLALight=16, MRLABase=16)
# Blocks per MRLA-base group in the reference DeiT (restarts at 0, 4, 8).
DEFAULT_GROUP_SIZE = 4


class MRLATokenBranch(BaseModule):
    """MRLA on the token sequence ``[B, E + h*w, C]`` of a ViT layer.

    ``E`` extra tokens (the class token, if any) lead the sequence. With
    ``x`` the layer's output, the branch returns ``M`` such that the layer
    output becomes ``x + M``:

    - the extra tokens of ``M`` are those of ``normx(x)``;
    - its patch tokens, laid out row-major on the ``h x w`` grid, are the
      MRLA layer's output for the map of ``normx(x)``: for MRLA-light with
      ``O^{t-1}`` the patch map of ``normo(x_in)``, ``x_in`` the layer's
      input; for MRLA-base over the group's cache.

    Q and K pool over the patch tokens only.

    Args:
        mrla (MRLALight | MRLABase): The layer attention on ``C`` channels.
        num_extra_tokens (int): Number of leading non-patch tokens.
        norm_eps (float): Epsilon of the LayerNorms. Defaults to 1e-6, as in
            the reference.
        init_cfg (dict or list[dict], optional): Initialization config.
    """

    def __init__(self,
                 mrla: Union[MRLALight, MRLABase],
                 num_extra_tokens: int,
                 norm_eps: float = 1e-6,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_extra_tokens = num_extra_tokens
        self.mrla = mrla
        self.normx = nn.LayerNorm(mrla.channels, eps=norm_eps)
        # Only the light version reads the layer's input (as O^{t-1}).
        if isinstance(mrla, MRLALight):
            self.normo = nn.LayerNorm(mrla.channels, eps=norm_eps)

    def _patch_map(self, tokens: Tensor, hw: Sequence[int]) -> Tensor:
        """Patch tokens of ``[B, E + h*w, C]`` as a ``[B, C, h, w]`` map."""
        b, n, c = tokens.shape
        h, w = hw
        if n != self.num_extra_tokens + h * w:
            raise ValueError(
                f'the token count {n} does not match the patch grid '
                f'{h}x{w} plus {self.num_extra_tokens} extra token(s) '
                f'(expected {self.num_extra_tokens + h * w})')
        patches = tokens[:, self.num_extra_tokens:]
        return patches.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor, hw: Sequence[int],
                history: Union[Tensor, MRLACache]) -> Tensor:
        """The branch output ``M`` for the layer output ``x``.

        Args:
            x (Tensor): The layer's output tokens, ``[B, E + h*w, C]``.
            hw (Sequence[int]): The patch grid ``(h, w)`` of this input.
            history (Tensor | MRLACache): The layer's input tokens (light)
                or the cache of the layer's group (base).

        Returns:
            Tensor: ``[B, E + h*w, C]``.
        """
        x = self.normx(x)
        x_map = self._patch_map(x, hw)
        if isinstance(self.mrla, MRLALight):
            o_prev = self._patch_map(self.normo(history), hw)
            out = self.mrla(x_map, o_prev)
        else:
            out = self.mrla(x_map, history)
        # Sizes, not flatten(2) or reshape(b, c, -1): the TorchScript
        # exporter mistranslates both here.
        tokens = out.reshape(x.shape[0], x.shape[2], hw[0] * hw[1]).transpose(
            1, 2)
        return torch.cat((x[:, :self.num_extra_tokens], tokens), dim=1)


@CLS_MODELS.register_module()
class MRLAVisionTransformer(VisionTransformer):
    """Vision transformer (ViT / DeiT) with MRLA after every encoder layer.

    The DeiT placement of `Cross-Layer Retrospective Retrieving via Layer
    Attention <https://arxiv.org/abs/2302.03985>`_: every encoder layer
    ``i`` gets an :class:`MRLATokenBranch` as ``layers.i.mrla`` and its
    output becomes ``x + layers.i.mrla(x, ...)``. The patch grid is the
    one of the actual input, so any input size and aspect ratio works.

    All parameters of mmpretrain's :class:`VisionTransformer` keep their
    names, so its checkpoints (e.g. DeiT) load with only the MRLA keys
    missing.

    Args:
        mrla_cfg (dict, optional): The MRLA layer of every encoder layer,
            ``dict(type='MRLALight')`` (default; value GELU) or
            ``dict(type='MRLABase')``, with the layer's arguments other than
            ``channels``; ``dim_per_head`` defaults to 16, as in the paper.
            None gives a plain vision transformer.
        mrla_group_size (int, optional): MRLA-base only: number of
            consecutive encoder layers sharing a cache (layers ``0, g, 2g,
            ...`` start a group). Defaults to None, meaning 4 as in the
            reference DeiT.
        **kwargs: Arguments of mmpretrain's :class:`VisionTransformer`.
    """

    def __init__(self,
                 *args,
                 mrla_cfg: Optional[dict] = dict(type='MRLALight'),
                 mrla_group_size: Optional[int] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.mrla_cfg = mrla_cfg
        self.mrla_group_size = self._check_group_size(
            mrla_cfg, mrla_group_size)
        if mrla_cfg is None:
            return
        for layer in self.layers:
            layer.mrla = MRLATokenBranch(
                self._build_mrla(mrla_cfg), self.num_extra_tokens)
        # The parent froze its layers before they had an MRLA branch.
        if self.frozen_stages > 0:
            self._freeze_stages()

    @staticmethod
    def _check_group_size(mrla_cfg: Optional[dict],
                          group_size: Optional[int]) -> Optional[int]:
        is_base = isinstance(mrla_cfg, dict) and mrla_cfg.get('type') in (
            'MRLABase', MRLABase)
        if isinstance(mrla_cfg, dict) and 'group_size' in mrla_cfg:
            raise ValueError(
                'mrla_cfg must not set group_size (got '
                f"{mrla_cfg['group_size']!r}): it is the backbone argument "
                'mrla_group_size')
        if not is_base:
            if group_size is not None:
                raise ValueError(
                    f'mrla_group_size={group_size!r} only applies to '
                    f'mrla_cfg type MRLABase, got mrla_cfg={mrla_cfg!r}; '
                    'leave it None')
            return None
        if group_size is None:
            return DEFAULT_GROUP_SIZE
        if (not isinstance(group_size, int) or isinstance(group_size, bool)
                or group_size < 1):
            raise ValueError(f'mrla_group_size must be an int >= 1 (layers '
                             f'per MRLA-base group), got {group_size!r}')
        return group_size

    def _build_mrla(self, mrla_cfg: dict) -> Union[MRLALight, MRLABase]:
        is_light = mrla_cfg.get('type') in ('MRLALight', MRLALight)
        # The reference applies GELU to the light value in DeiT only.
        defaults = dict(value_act='gelu') if is_light else {}
        try:
            return build_mrla_layer(mrla_cfg, self.embed_dims,
                                    VIT_DIM_PER_HEAD, **defaults)
        except ValueError as e:
            raise ValueError(f'mrla_cfg={mrla_cfg!r} with embed_dims='
                             f'{self.embed_dims}: {e}') from e

    def forward(self, x: Tensor):
        b = x.shape[0]
        x, patch_resolution = self.patch_embed(x)
        if self.cls_token is not None:
            # Sizes, not expand(b, -1, -1): the TorchScript exporter
            # mistranslates the -1 here.
            cls_token = self.cls_token.expand(b, *self.cls_token.shape[1:])
            x = torch.cat((cls_token, x), dim=1)
        x = x + resize_pos_embed(
            self.pos_embed,
            self.patch_resolution,
            patch_resolution,
            mode=self.interpolate_mode,
            num_extra_tokens=self.num_extra_tokens)
        x = self.pre_norm(self.drop_after_pos(x))

        outs = []
        cache = None
        for i, layer in enumerate(self.layers):
            x_in = x
            x = layer(x)
            if self.mrla_cfg is not None:
                if self.mrla_group_size is None:
                    history = x_in
                else:
                    if i % self.mrla_group_size == 0:
                        cache = layer.mrla.mrla.new_cache()
                    history = cache
                x = x + layer.mrla(x, patch_resolution, history)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, patch_resolution))
        return tuple(outs)

"""Record where each MRLA layer looks, with forward hooks.

Hooks on the :class:`MRLABase` and :class:`MRLALight` layers of a model
recompute, from the layer's own input and parameters, the quantities the
layer used, with the functions of :mod:`mrla_mm.ops.mrla_math` (no second
copy of the math):

- MRLA-base: the softmax weights ``[B, G, t]`` that layer ``t`` puts on the
  layers ``s <= t`` of its group, from its query and the keys in the
  group's :class:`MRLACache` (which holds this layer's key once it ran);
- MRLA-light: the per-head gate ``[B, G]`` (:meth:`MRLALight.gate`) and the
  magnitude of the learned ``lambda`` averaged over each head's channels.

Everything is averaged over the images.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from mrla_mm.models.layers import MRLABase, MRLACache, MRLALight
from mrla_mm.ops.mrla_math import (
    base_weights,
    channel_conv1d,
    channel_descriptor,
)
from .layer_attention import (
    BaseGroupAttention,
    LayerAttention,
    LightGroupAttention,
    group_name,
    short_name,
)


class LayerAttentionRecorder:
    """Forward hooks that collect MRLA weights over several forward passes.

    Use as a context manager around the forward passes, one image batch
    each, then call :meth:`result`.

    Args:
        model (nn.Module): Any module holding MRLA layers.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(n, m) for n, m in model.named_modules()
                       if isinstance(m, (MRLABase, MRLALight))]
        if not self.layers:
            raise ValueError(
                f'{type(model).__name__} has no MRLABase or MRLALight layer '
                'to visualise')
        self.handles = []
        self.num_images = 0
        # Sums over images, keyed by layer name.
        self.base_sums: Dict[str, Tensor] = {}
        self.light_sums: Dict[str, Tensor] = {}
        self.base_groups: Optional[List[List[str]]] = None
        self._pass_caches: List[MRLACache] = []
        self._pass_groups: List[List[str]] = []

    def __enter__(self):
        for name, module in self.layers:
            hook = self._base_hook if isinstance(
                module, MRLABase) else self._light_hook
            self.handles.append(
                module.register_forward_hook(
                    self._named(hook, name), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @staticmethod
    def _named(hook, name):
        return lambda module, args, kwargs, output: hook(
            name, module, args, kwargs)

    @staticmethod
    def _arg(args, kwargs, index, key):
        return args[index] if len(args) > index else kwargs[key]

    def _base_hook(self, name, module, args, kwargs):
        x = self._arg(args, kwargs, 0, 'x')
        cache = self._arg(args, kwargs, 1, 'cache')
        # Keep the caches alive for the pass: they identify the groups.
        for i, seen in enumerate(self._pass_caches):
            if seen is cache:
                group = self._pass_groups[i]
                break
        else:
            self._pass_caches.append(cache)
            group = []
            self._pass_groups.append(group)
        group.append(name)
        if len(cache) != len(group):
            raise RuntimeError(
                f'{name} ran as layer {len(cache)} of its MRLA-base cache '
                f'but is the {len(group)}th layer seen with it')
        q = channel_conv1d(channel_descriptor(x), module.query_conv.weight)
        w = base_weights(q, cache.stacked_keys(), module.num_heads)
        self._add(self.base_sums, name, w.detach().float().sum(0))

    def _light_hook(self, name, module, args, kwargs):
        x = self._arg(args, kwargs, 0, 'x')
        self._add(self.light_sums, name,
                  module.gate(x).detach().float().sum(0))

    @staticmethod
    def _add(sums, name, value):
        sums[name] = value if name not in sums else sums[name] + value

    def forward(self, model: nn.Module, inputs: Tensor):
        """Run ``model(inputs)`` once, counting ``inputs.shape[0]`` images.
        """
        self._pass_caches, self._pass_groups = [], []
        with torch.no_grad():
            out = model(inputs)
        if self.base_groups is None:
            self.base_groups = self._pass_groups
        elif self.base_groups != self._pass_groups:
            raise RuntimeError('the MRLA-base groups changed between passes:'
                               f' {self.base_groups} vs {self._pass_groups}')
        self._pass_caches = []
        self.num_images += inputs.shape[0]
        return out

    def result(self) -> LayerAttention:
        """Means over all images seen so far."""
        if not self.num_images:
            raise RuntimeError('no forward pass was recorded')
        n = self.num_images
        result = LayerAttention(num_images=n)
        groups = self.base_groups or []
        names = [group_name(layers[0]) for layers in groups]
        for layers, name in zip(groups, names):
            if names.count(name) > 1:
                # Several caches in one module list (a ViT's block groups):
                # name each by its block range, e.g. 'layers.4-7'.
                first, last = (short_name(layers[i]).split('.')[0]
                               for i in (0, -1))
                name = f'{name}.{first}-{last}'
            result.base.append(
                BaseGroupAttention(
                    name, list(layers),
                    [self.base_sums[layer] / n for layer in layers]))
        modules = dict(self.layers)
        for name in self.light_sums:
            module = modules[name]
            lam = module.lambda_t.detach().float().abs()
            lam = lam.reshape(module.num_heads, -1).mean(1)
            gate = self.light_sums[name] / n
            last = result.light[-1] if result.light else None
            if (last is not None and last.name == group_name(name)
                    and last.gates.shape[1] == gate.shape[0]):
                last.layers.append(name)
                last.gates = torch.cat([last.gates, gate[None]])
                last.lambda_abs = torch.cat([last.lambda_abs, lam[None]])
            else:
                result.light.append(
                    LightGroupAttention(group_name(name), [name], gate[None],
                                        lam[None]))
        return result

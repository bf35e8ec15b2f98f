from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from mrla_mm.ops import check_given_together
from mrla_mm.ops.batch_norm_add_relu import (
    BatchNormAddReLURecipe,
    RecomputedMaps,
)
from mrla_mm.ops.readout_gradients import ReadoutGradients

Source = Union[Tensor, BatchNormAddReLURecipe]


class MRLACache:
    """Keys and values of the layers of one MRLA-base group so far.

    Values are kept as the separate tensors the layers produced and are read
    in place by the readout: nothing is concatenated, so layer ``t`` costs
    ``t`` reads of earlier values and no copies. A cache lives for one
    forward pass of one group (a ResNet stage, a block group of a ViT),
    and with it the :class:`ReadoutGradients` of its layers' backward.

    Args:
        detach (bool): Detach a layer's key and value once the next layer
            is added, so that gradients do not flow from later layers into
            earlier ones through the cache; a layer's own key and value
            still get the gradient of its own readout. Defaults to False,
            as in the paper.
    """

    def __init__(self, detach: bool = False):
        self.detach = detach
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []
        self.sources: List[Optional[Source]] = []
        self.kernels: List[Optional[Tensor]] = []
        self.gradients = ReadoutGradients()

    def __len__(self) -> int:
        return len(self.values)

    def append(self,
               key: Tensor,
               value: Tensor,
               source: Optional[Tensor] = None,
               kernel: Optional[Tensor] = None) -> None:
        """Add one layer's key ``[B, C]`` and value ``[B, C, H, W]``; and,
        for a backward that recomputes the value, the map it was computed
        from and its depthwise kernel (held only when given: in inference
        they would outlive their layer). A source that an active
        :class:`RecomputedMaps` can rebuild is held as its recipe, so that
        the map itself is let go with its layer."""
        if self.values and value.shape != self.values[0].shape:
            raise ValueError(
                'all layers of an MRLA-base group must produce values of one '
                f'shape: the group started with {tuple(self.values[0].shape)},'
                f' got {tuple(value.shape)}; start a new MRLACache where the '
                'shape changes')
        check_given_together('source', source, 'kernel', kernel)
        if source is not None:
            source = RecomputedMaps.recipe_of(source) or source
        if self.detach and self.values:
            # The previous layer's entry is detached once a later layer
            # reads it; its own readout, which came first, trained it.
            self.keys[-1] = self.keys[-1].detach()
            self.values[-1] = self.values[-1].detach()
            if isinstance(self.sources[-1], Tensor):
                self.sources[-1] = self.sources[-1].detach()
            if self.kernels[-1] is not None:
                self.kernels[-1] = self.kernels[-1].detach()
        self.keys.append(key)
        self.values.append(value)
        self.sources.append(source)
        self.kernels.append(kernel)

    def value_sources(
            self) -> Optional[Tuple[List[Source], List[Tensor]]]:
        """The sources and kernels of all values, or None when a layer did
        not give them."""
        if any(s is None for s in self.sources):
            return None
        return self.sources, self.kernels

    def stacked_keys(self) -> Tensor:
        """All keys as ``[B, T, C]`` (small: one descriptor per layer)."""
        return torch.stack(self.keys, dim=1)

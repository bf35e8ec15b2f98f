from typing import List

import torch
from torch import Tensor


class MRLACache:
    """Keys and values of the layers of one MRLA-base group so far.

    Values are kept as the separate tensors the layers produced and are read
    in place by the readout: nothing is concatenated, so layer ``t`` costs
    ``t`` reads of earlier values and no copies. A cache lives for one
    forward pass of one group (a ResNet stage, a block group of a ViT).

    Args:
        detach (bool): Store detached keys and values, so that gradients
            do not flow from later layers into earlier ones through the
            cache. Defaults to False, as in the paper.
    """

    def __init__(self, detach: bool = False):
        self.detach = detach
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []
        self.sources: List[Tensor] = []
        self.kernels: List[Tensor] = []

    def __len__(self) -> int:
        return len(self.values)

    def append(self, key: Tensor, value: Tensor, source: Tensor,
               kernel: Tensor) -> None:
        """Add one layer's key ``[B, C]`` and value ``[B, C, H, W]``, the
        value computed from ``source`` with the depthwise ``kernel``."""
        if self.values and value.shape != self.values[0].shape:
            raise ValueError(
                'all layers of an MRLA-base group must produce values of one '
                f'shape: the group started with {tuple(self.values[0].shape)},'
                f' got {tuple(value.shape)}; start a new MRLACache where the '
                'shape changes')
        if self.detach:
            key, value = key.detach(), value.detach()
            source, kernel = source.detach(), kernel.detach()
        self.keys.append(key)
        self.values.append(value)
        self.sources.append(source)
        self.kernels.append(kernel)

    def stacked_keys(self) -> Tensor:
        """All keys as ``[B, T, C]`` (small: one descriptor per layer)."""
        return torch.stack(self.keys, dim=1)

"""What the layer-attention recorder finds: per group of MRLA layers, the
MRLA-base softmax weights or the MRLA-light gates and lambdas, averaged
over images, with the names the summary and the pictures give them.

Base groups are the layers sharing one cache (a ResNet stage, a block group
of a ViT, named by its range, e.g. ``layers.4-7``); light layers are
grouped by the module path before the block index (``layer1.0.mrla`` ->
``layer1``).
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor


def group_name(layer_name: str) -> str:
    """``'layer1.0.mrla'`` -> ``'layer1'``: the path before the block index.
    """
    parts = layer_name.split('.')
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return '.'.join(parts[:i]) or layer_name
    return layer_name


def count_noun(n: int, noun: str) -> str:
    """``count_noun(2, 'head')`` -> ``'2 heads'``."""
    return f'{n} {noun}' + ('' if n == 1 else 's')


@dataclass
class BaseGroupAttention:
    """MRLA-base weights of the layers of one group (one cache).

    Attributes:
        name (str): The group, e.g. ``'layer2'``.
        layers (list[str]): Module names of its MRLA layers, in order.
        weights (list[Tensor]): ``weights[t]`` is ``[G, t + 1]``, the mean
            over images of layer ``t``'s weights on layers ``0..t``.
    """
    name: str
    layers: List[str]
    weights: List[Tensor]

    @property
    def num_heads(self) -> int:
        return self.weights[0].shape[0]

    def matrix(self, head: Optional[int] = None) -> Tensor:
        """``[T, T]`` map, row ``t`` = weights of layer ``t`` on ``s <= t``.

        Averaged over heads, or of one ``head``; NaN above the diagonal.
        Each row sums to one.
        """
        n = len(self.layers)
        out = torch.full((n, n), float('nan'))
        for t, w in enumerate(self.weights):
            out[t, :t + 1] = w.mean(0) if head is None else w[head]
        return out


@dataclass
class LightGroupAttention:
    """MRLA-light gates and lambdas of the layers of one group.

    Attributes:
        name (str): The group, e.g. ``'layer2'``.
        layers (list[str]): Module names of its MRLA layers, in order.
        gates (Tensor): ``[L, G]`` mean gate per layer and head over images.
        lambda_abs (Tensor): ``[L, G]`` mean ``|lambda|`` over each head's
            channels (a parameter: the same for every image).
    """
    name: str
    layers: List[str]
    gates: Tensor
    lambda_abs: Tensor


@dataclass
class LayerAttention:
    """What :func:`record_layer_attention` found, averaged over images."""
    num_images: int
    base: List[BaseGroupAttention] = field(default_factory=list)
    light: List[LightGroupAttention] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines per group of the numbers the pictures show."""
        lines = []
        if self.base:
            lines.append(f'MRLA-base: softmax weights over earlier layers, '
                         f'mean over {self.num_images} image(s) and heads')
        for g in self.base:
            m = g.matrix()
            head = (f'  {g.name}: {len(g.layers)} layers, '
                    f'{count_noun(g.num_heads, "head")}')
            if len(g.layers) == 1:
                lines.append(head + ' (a lone layer attends to itself)')
                continue
            lines.append(
                f'{head}; layers 1..{len(g.layers) - 1} put '
                f'{m.diagonal()[1:].mean():.3f} on themselves and '
                f'{m[1:, 0].mean():.3f} on the first layer (mean)')
            for t in range(1, len(g.layers)):
                row = m[t, :t + 1]
                top = int(row.argmax())
                lines.append(f'    {g.layers[t]}: self {row[t]:.3f}, most '
                             f'on {g.layers[top]} ({row[top]:.3f})')
        if self.light:
            lines.append(f'MRLA-light: gate sigmoid(q.k/sqrt(d)) mean over '
                         f'{self.num_images} image(s); |lambda| mean over '
                         'channels')
        for g in self.light:
            lines.append(
                f'  {g.name}: {len(g.layers)} layers, '
                f'{count_noun(g.gates.shape[1], "head")}; gate mean '
                f'{g.gates.mean():.3f} (min {g.gates.min():.3f}, max '
                f'{g.gates.max():.3f}); |lambda| '
                f'mean {g.lambda_abs.mean():.3f} (per layer: '
                + ', '.join(f'{v:.2f}' for v in g.lambda_abs.mean(1)) + ')')
        return '\n'.join(lines)

    def to_dict(self) -> Dict:
        """JSON-friendly numbers (lists of floats)."""
        return dict(
            num_images=self.num_images,
            base=[
                dict(name=g.name, layers=g.layers,
                     weights=[w.tolist() for w in g.weights])
                for g in self.base
            ],
            light=[
                dict(name=g.name, layers=g.layers, gates=g.gates.tolist(),
                     lambda_abs=g.lambda_abs.tolist()) for g in self.light
            ])


def short_name(name: str) -> str:
    """Layer label inside its group: ``layer1.2.mrla`` -> ``2``."""
    return re.sub(r'(\.mrla)+$', '', name[len(group_name(name)) + 1:])


def layer_label(name: str) -> str:
    """``layer1.2.mrla`` -> ``layer1.2``: the block or encoder layer."""
    return re.sub(r'(\.mrla)+$', '', name)
